"""Is every result current? Re-hash each recorded artefact, its inputs and its code.

``python -m workflow.check`` (or ``make check``) reads every provenance record under
``results/`` and reports each artefact as ``ok``, ``stale`` (an input or the code its script
runs changed since), ``modified`` (the artefact was edited after it was made), ``missing``
or ``unrecorded`` (a file under results/ no record names). ``changed_since_recorded`` is the
same comparison for one artefact, used when the workflow is planned (rules/common.smk).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from workflow.codeversion import REPO, code_version
from workflow.provenance import RECORD_SUFFIX, input_digest, sha256_file

# Derived, re-creatable inputs (prepared models, trained lenses), git-ignored: a fresh clone
# has none, and the check cannot re-hash them there; what they were is in the records.
DERIVED = "resources"


def changed_since_recorded(artefact: str | os.PathLike[str], results: str = "results") -> str | None:
    """Why ``artefact`` is not what its rule wrote (its sha256 differs from the provenance
    record that lists it), or None: unchanged, not yet made, or made without a record."""
    path = Path(artefact)
    if not path.is_file() or results not in path.parts:
        return None
    provenance = Path(*path.parts[: path.parts.index(results) + 2]) / "provenance"
    records = tuple((str(f), f.stat().st_mtime_ns) for f in sorted(provenance.glob(f"*{RECORD_SUFFIX}")))
    recorded = _recorded_artefacts(records).get(str(path))
    if recorded is None:
        return None
    digest, record_file, rule = recorded
    stat = path.stat()
    if _file_digest(str(path), stat.st_mtime_ns, stat.st_size) == digest:
        return None
    return f"was changed after {rule} wrote it (its sha256 differs from {record_file})"


@functools.lru_cache(maxsize=8)
def _recorded_artefacts(records: tuple[tuple[str, int], ...]) -> dict[str, tuple[str, str, str]]:
    """artefact -> (sha256, record file, rule), from the records named (with their mtimes)."""
    found = {}
    for record_file, _ in records:
        record = json.loads(Path(record_file).read_text(encoding="utf-8"))
        for name, digest in record.get("artefacts", {}).items():
            found[name] = (digest, record_file, record.get("rule", "its rule"))
    return found


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


@dataclass(frozen=True)
class Finding:
    status: str  # ok | stale | modified | missing | unrecorded
    artefact: str
    reason: str = ""


def check(root: str | os.PathLike[str] = ".", results: str = "results") -> list[Finding]:
    """Re-hash every recorded artefact and its inputs under ``root/results``."""
    root = Path(root)
    findings: list[Finding] = []
    recorded: set[str] = set()
    for record_file in sorted((root / results).rglob(f"*{RECORD_SUFFIX}")):
        record = json.loads(record_file.read_text(encoding="utf-8"))
        stale, absent = [], []
        for name, digest in record["inputs"].items():
            now = input_digest(root / name)
            if now is None and Path(name).parts[:1] == (DERIVED,):
                absent.append(name)  # re-creatable and git-ignored: a fresh clone has none
            elif now is None:
                stale.append(f"input {name} is missing")
            elif now != digest:
                stale.append(f"input {name} changed")
        script = record["code"].get("script")
        also = record["code"].get("also", [])
        if script is None or not all((REPO / path).is_file() for path in (script, *also)):
            stale.append("made by code this version does not have")
        elif code_version(script, *also) != record["code"]["version"]:
            stale.append(f"the code of {script} (or of a workflow/ module it imports) changed")
        for name, digest in record["artefacts"].items():
            recorded.add(str(Path(name)))
            path = root / name
            if not path.is_file():
                findings.append(Finding("missing", name, f"recorded in {record_file.relative_to(root)}"))
            elif sha256_file(path) != digest:
                findings.append(Finding("modified", name, "edited after it was made"))
            elif stale:
                findings.append(Finding("stale", name, "; ".join(stale)))
            else:
                note = f"({', '.join(absent)} not here to re-hash: taken as recorded)" if absent else ""
                findings.append(Finding("ok", name, note))
    for path in sorted((root / results).rglob("*")):
        name = str(path.relative_to(root))
        if (
            path.is_file()
            and path.suffix in (".md", ".json", ".csv")
            and not name.endswith(RECORD_SUFFIX)
            and "cache" not in path.relative_to(root / results).parts
            and name not in recorded
        ):
            findings.append(Finding("unrecorded", name, "no provenance record names it"))
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="repository root (default: the current directory)")
    args = parser.parse_args(argv)
    findings = check(args.root)
    width = max([len(f.artefact) for f in findings] + [8])
    for f in findings:
        print(f"{f.status:<10} {f.artefact:<{width}} {f.reason}".rstrip())
    bad = [f for f in findings if f.status != "ok"]
    print(f"{len(findings) - len(bad)} ok, {len(bad)} not ok" if findings else "no artefacts found under results/")
    return 1 if bad or not findings else 0


if __name__ == "__main__":
    sys.exit(main())

"""Is every result current? The plan's comparison with the provenance records, per artefact.

``python -m workflow.check`` (or ``make check``) reports each artefact under ``results/`` as
``ok``, ``stale`` (the plan would make it again: its params, code or an input changed since
its record, or it reads what another stale job makes again; the reason says which),
``modified`` (the artefact was edited after it was made), ``missing`` (a record names it and
it is gone) or ``unrecorded`` (no record names it). Staleness comes from a dry run of the
workflow (``snakemake -n``, the default target), which compares the current config and code
with the records exactly as every plan does (workflow/plan.py): the check and the dry run
cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workflow.plan import REPORT_ENV
from workflow.provenance import RECORD_SUFFIX, sha256_file


@dataclass(frozen=True)
class Finding:
    status: str  # ok | stale | modified | missing | unrecorded
    artefact: str
    reason: str = ""


class PlanError(RuntimeError):
    """The workflow cannot be planned (a config error, say); the message is Snakemake's."""


def planned(root: str | os.PathLike[str] = ".") -> dict[str, str]:
    """artefact -> why the plan makes it again, from a dry run in ``root``."""
    with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
        report = Path(tmp) / "plan.json"
        done = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--quiet", "all"],
            cwd=root, capture_output=True, text=True, timeout=1800,
            env={**os.environ, REPORT_ENV: str(report)},
        )
        if done.returncode != 0:
            raise PlanError((done.stdout + done.stderr).strip()[-3000:])
        jobs = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else []
    return {output: "; ".join(job["reasons"]) for job in jobs for output in job["outputs"]}


def check(root: str | os.PathLike[str] = ".", results: str = "results") -> list[Finding]:
    """Every recorded artefact under ``root/results``, checked against its record and the plan."""
    root = Path(root)
    stale = planned(root)
    findings: list[Finding] = []
    recorded: set[str] = set()
    for record_file in sorted((root / results).rglob(f"*{RECORD_SUFFIX}")):
        name_of_record = str(record_file.relative_to(root))
        recorded.add(name_of_record)
        try:
            artefacts = json.loads(record_file.read_text(encoding="utf-8"))["artefacts"]
        except (OSError, ValueError, KeyError):
            findings.append(Finding("stale", name_of_record, "cannot be read as a provenance record"))
            continue
        for name, digest in artefacts.items():
            recorded.add(str(Path(name)))
            path = root / name
            if not path.is_file():
                findings.append(Finding("missing", name, f"recorded in {name_of_record}"))
            elif sha256_file(path) != digest:
                findings.append(Finding("modified", name, "edited after it was made"))
            elif name in stale:
                findings.append(Finding("stale", name, stale[name]))
            else:
                findings.append(Finding("ok", name))
    for path in sorted((root / results).rglob("*")):
        name = str(path.relative_to(root))
        if path.is_file() and "cache" not in path.relative_to(root / results).parts and name not in recorded:
            findings.append(Finding("unrecorded", name, "no provenance record names it"))
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="repository root (default: the current directory)")
    args = parser.parse_args(argv)
    try:
        findings = check(args.root)
    except PlanError as error:
        print(f"the workflow cannot be planned, so nothing can be checked:\n{error}", file=sys.stderr)
        return 2
    width = max([len(f.artefact) for f in findings] + [8])
    for f in findings:
        print(f"{f.status:<10} {f.artefact:<{width}} {f.reason}".rstrip())
    bad = [f for f in findings if f.status != "ok"]
    print(f"{len(findings) - len(bad)} ok, {len(bad)} not ok" if findings else "no artefacts found under results/")
    return 1 if bad or not findings else 0


if __name__ == "__main__":
    sys.exit(main())

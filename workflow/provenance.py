"""Provenance: what each artefact was made from, and a check that it still is.

Two parts:

- ``code_version(stage)``: a hash of the ``workflow/`` modules a stage runs. Each rule
  carries it as a param, because Snakemake re-runs a ``script:`` rule when the script
  changes but not when a module it imports changes.
- A provenance record per rule run, ``results/001/provenance/{name}.prov.json``
  (a declared output of the rule, written with its artefacts): sha256 of each
  artefact and each input, the rule's params (the config subset it used), the stage's
  code version, the git commit and whether the tree was dirty, package versions, and
  rule-specific facts (model source hash or revision; evaluator settings and cache
  keys). ``check`` re-hashes everything and reports each artefact as ``ok``,
  ``stale`` (an input or the code changed since), ``modified`` (the artefact was
  edited after it was made), ``missing`` or ``unrecorded``.

Run the check with ``python -m workflow.provenance check`` (or ``make check``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
RECORD_SUFFIX = ".prov.json"
# Files in a directory input larger than this are fingerprinted by size, not content
# (a prepared model's weights are pinned by the GGUF sha256 in its manifest).
DIRECTORY_CONTENT_LIMIT = 64 * 2**20

COMMON = ("__init__.py", "atomic.py", "errors.py", "logs.py")
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "prepare": COMMON + ("provenance.py", "models.py"),  # models.py hashes files with provenance.py
    # provenance.py also writes these stages' records, which are outputs of their rules.
    "lens": COMMON + ("provenance.py", "models.py", "backends.py", "lens.py", "native.py", "native/lens_block.c", "experiment.py", "records.py"),
    "plots": COMMON + ("plots.py", "records.py", "evaluation/__init__.py", "evaluation/analysis.py"),
    "pages": COMMON + ("pages.py",),
    # Training and applying the tuned lens (it decodes with the lens code).
    "tuned": COMMON + ("provenance.py", "models.py", "backends.py", "lens.py", "native.py", "native/lens_block.c", "experiment.py", "records.py", "tuned.py"),
    "evaluate": COMMON
    + (
        "provenance.py",
        "records.py",
        "evaluation/__init__.py",
        "evaluation/analysis.py",
        "evaluation/cache.py",
        "evaluation/digest.py",
        "evaluation/offline.py",
        "evaluation/providers.py",
        "evaluation/templates.py",
        "evaluation/run.py",
    ),
}


PACKAGES = ("torch", "transformers", "transformer-lens", "tokenizers", "safetensors", "gguf", "numpy", "pandas", "snakemake", "openai", "anthropic")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape the results."""
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def code_version(stage: str) -> str:
    """sha256 (first 16 hex digits) over the source of the modules ``stage`` runs."""
    digest = hashlib.sha256()
    for name in STAGE_MODULES[stage]:
        digest.update(name.encode() + b"\0" + (PACKAGE_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def input_digest(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a file; for a directory, of its file names, sizes and (small) contents."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".snakemake")):
        size = file.stat().st_size
        content = sha256_file(file) if size <= DIRECTORY_CONTENT_LIMIT else "large"
        digest.update(f"{file.relative_to(path)}\0{size}\0{content}\n".encode())
    return "dir:" + digest.hexdigest()


def git_state(repo: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """The commit of the code and whether the code or config differ from it (outputs ignored)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    paths = [p for p in ("Snakefile", "rules", "scripts", "workflow", "config", "prompts") if Path(repo, p).exists()]
    status = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return {"commit": commit, "dirty": bool(status)}


def record_path(results_dir: str | os.PathLike[str], name: str) -> Path:
    return Path(results_dir) / "provenance" / f"{name}{RECORD_SUFFIX}"


def make_record(
    rule: str,
    stage: str,
    artefacts: list[str],
    inputs: list[str],
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance record of one rule run (deterministic apart from the git state)."""
    missing = [a for a in artefacts if not Path(a).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot record provenance of missing artefacts {missing}")
    return {
        "rule": rule,
        "artefacts": {str(a): sha256_file(a) for a in artefacts},
        "inputs": {str(i): input_digest(i) for i in sorted(set(map(str, inputs)))},
        "params": {k: v for k, v in params.items() if k != "code"},
        "code": {"stage": stage, "version": code_version(stage), **git_state()},
        "packages": package_versions(),
        **(extra or {}),
    }


def write_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    from workflow.atomic import write_json

    write_json(path, record)


def record_rule(snakemake: Any, stage: str, artefacts: list[str], extra: dict[str, Any] | None = None) -> None:
    """Write the provenance record of a running rule to its ``provenance`` output."""
    params = {k: v for k, v in snakemake.params.items()}
    record = make_record(snakemake.rule, stage, artefacts, list(snakemake.input), params, extra)
    write_record(snakemake.output.provenance, record)


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
        stale = []
        for name, digest in record["inputs"].items():
            now = input_digest(root / name)
            if now is None:
                stale.append(f"input {name} is missing")
            elif now != digest:
                stale.append(f"input {name} changed")
        stage = record["code"]["stage"]
        if stage in STAGE_MODULES and code_version(stage) != record["code"]["version"]:
            stale.append(f"the {stage} code in workflow/ changed")
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
                findings.append(Finding("ok", name))
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
    parser = argparse.ArgumentParser(prog="python -m workflow.provenance", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("check", help="re-hash the inputs of every artefact under results/")
    run.add_argument("--root", default=".", help="repository root (default: the current directory)")
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

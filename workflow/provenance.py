"""Provenance records: what each artefact was made from.

A provenance record per rule run, ``results/001/provenance/{name}.prov.json``
  (a declared output of the rule, written with its artefacts): sha256 of each
  artefact and each input, the rule's params (the config subset it used), the code
  version of its script, package versions, and
  rule-specific facts (model source hash or revision; evaluator settings and cache
  keys).

What the records are checked against: ``workflow/check.py`` (``make check``). The code
version of a rule comes from its params (``workflow/codeversion.py`` computes it when the
rules are read), so that this module, which every rule script imports, does not import the
machinery that hashes code.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

RECORD_SUFFIX = ".prov.json"
# Files in a directory input larger than this are fingerprinted by size, not content
# (a prepared model's weights are pinned by the GGUF sha256 in its manifest).
DIRECTORY_CONTENT_LIMIT = 64 * 2**20

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
    script: str,
    version: str,
    artefacts: list[str],
    inputs: list[str],
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
    also: list[str] | None = None,
) -> dict[str, Any]:
    """The provenance record of one rule run: only what the inputs determine (the git
    commit, which changes with every commit of results, goes to the job's log instead)."""
    missing = [a for a in artefacts if not Path(a).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot record provenance of missing artefacts {missing}")
    return {
        "rule": rule,
        "artefacts": {str(a): sha256_file(a) for a in artefacts},
        "inputs": {str(i): input_digest(i) for i in sorted(set(map(str, inputs)))},
        "params": {k: v for k, v in params.items() if k not in ("code", "code_also")},
        # also: code the script runs that no import in it names (an experiment's package).
        "code": {"script": script, "version": version, **({"also": list(also)} if also else {})},
        "packages": package_versions(),
        **(extra or {}),
    }


def write_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    from workflow.atomic import write_json

    write_json(path, record)


def record_rule(snakemake: Any, script: str, artefacts: list[str], extra: dict[str, Any] | None = None) -> None:
    """Write the provenance record of a running rule to its ``provenance`` output."""
    import logging

    state = git_state()
    version = snakemake.params.code  # the code version the rule carries (workflow/codeversion.py)
    logging.getLogger(__name__).info("code: %s, git commit %s%s", version, state["commit"],
                                     " with uncommitted changes" if state["dirty"] else "")
    params = {k: v for k, v in snakemake.params.items()}
    also = params.get("code_also")
    record = make_record(snakemake.rule, script, version, artefacts, list(snakemake.input), params, extra, also)
    write_record(snakemake.output.provenance, record)

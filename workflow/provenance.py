"""Provenance: what each artefact was made from, and a check that it still is.

Two parts:

- ``code_version(script)``: a hash of a rule script and the ``workflow/`` modules it
  imports, by their syntax. Each rule carries it as a param, because Snakemake does not
  re-run a ``script:`` rule when a module it imports changes (and would re-run it for a
  comment in the script: profiles/default turns that trigger off).
- A provenance record per rule run, ``results/001/provenance/{name}.prov.json``
  (a declared output of the rule, written with its artefacts): sha256 of each
  artefact and each input, the rule's params (the config subset it used), the code
  version of its script, package versions, and
  rule-specific facts (model source hash or revision; evaluator settings and cache
  keys). ``check`` re-hashes everything and reports each artefact as ``ok``,
  ``stale`` (an input or the code changed since), ``modified`` (the artefact was
  edited after it was made), ``missing`` or ``unrecorded``.

Run the check with ``python -m workflow.provenance check`` (or ``make check``).
"""

from __future__ import annotations

import argparse
import ast
import functools
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

REPO = PACKAGE_DIR.parent
# Files a module reads as code, beside the modules it imports.
CODE_DATA: dict[str, tuple[str, ...]] = {"workflow/native.py": ("workflow/native/lens_block.c",)}


def _module_file(name: str) -> Path | None:
    """The file of module ``workflow.x.y`` in this repository, or None for anything else."""
    parts = name.split(".")
    if parts[0] != "workflow":
        return None
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, tree: ast.AST) -> set[str]:
    """The ``workflow`` modules ``path`` imports anywhere (also inside functions)."""
    found: set[str] = set()
    package = ".".join(path.relative_to(REPO).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*anchor, *([module] if module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from workflow import native`
    modules = set()
    for name in found:
        parts = name.split(".")
        # Importing workflow.a.b runs workflow/__init__.py and workflow/a/__init__.py too.
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in modules if _module_file(m) is not None}


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=None)
def _parsed(path: Path, stamp: tuple[int, int]) -> tuple[str, frozenset[str]]:
    """(the code as its syntax tree says it, the workflow modules it imports) of a .py file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports = frozenset(_imports(path, tree))
    return ast.unparse(_without_docstrings(tree)), imports


def code_files(script: str | os.PathLike[str]) -> list[Path]:
    """``script`` and every file of this repository it runs: the ``workflow`` modules it
    imports, what they import in turn, and the files they read as code (CODE_DATA)."""
    first = (REPO / script).resolve()
    seen: set[Path] = set()
    pending = [first]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.suffix == ".py":
            stat = path.stat()
            _, imports = _parsed(path, (stat.st_mtime_ns, stat.st_size))
            pending.extend(_module_file(m) for m in imports)  # type: ignore[misc]
        pending.extend(REPO / data for data in CODE_DATA.get(str(path.relative_to(REPO)), ()))
    return sorted(seen)


def code_version(script: str | os.PathLike[str]) -> str:
    """sha256 (first 16 hex digits) of what ``script`` runs, by its syntax, not its bytes.

    Each rule carries it as a param: Snakemake alone does not re-run a rule when a module
    its script imports changes. Python is hashed as its syntax tree without docstrings
    (``ast.unparse``), so comments, docstrings and formatting change nothing; other files
    (the C kernel) by their bytes. Which modules count is read from the imports.
    """
    digest = hashlib.sha256()
    for path in code_files(script):
        if path.suffix == ".py":
            stat = path.stat()
            text = _parsed(path, (stat.st_mtime_ns, stat.st_size))[0].encode()
        else:
            text = path.read_bytes()
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + text + b"\0")
    return digest.hexdigest()[:16]


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
    artefacts: list[str],
    inputs: list[str],
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
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
        "params": {k: v for k, v in params.items() if k != "code"},
        "code": {"script": script, "version": code_version(script)},
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
    logging.getLogger(__name__).info("code: %s, git commit %s%s", code_version(script), state["commit"],
                                     " with uncommitted changes" if state["dirty"] else "")
    params = {k: v for k, v in snakemake.params.items()}
    record = make_record(snakemake.rule, script, artefacts, list(snakemake.input), params, extra)
    write_record(snakemake.output.provenance, record)


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
        stale = []
        for name, digest in record["inputs"].items():
            now = input_digest(root / name)
            if now is None:
                stale.append(f"input {name} is missing")
            elif now != digest:
                stale.append(f"input {name} changed")
        script = record["code"].get("script")
        if script is None or not (REPO / script).is_file():
            stale.append("made by code this version does not have")
        elif code_version(script) != record["code"]["version"]:
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

"""Code versions: what a rule's script runs, hashed by its syntax.

``code_version(script)`` hashes a rule script and every ``workflow/`` module it imports
(found by reading the imports, also those inside functions, and what those modules import
in turn), plus the files those modules read as code: a C kernel, a page's script or style,
named by a string in the module (``Path(__file__).with_name("lens_block.c")``) and found
under the module's own folder. Python is hashed as its
syntax tree without docstrings (``ast.unparse``), so comments, docstrings and formatting
change nothing; other files by their bytes. Each rule carries its script's version as a
param: Snakemake alone does not re-run a script rule when a module it imports changes.

Parsing and unparsing every module would slow each Snakemake start (planning and dry
runs included), so what a file's bytes give is kept in the per-user cache
(``workflow.base.cache``, ``codeversion/``), named by the sha256 of the Python version, the file's
path in the repository and its bytes: a changed file is a new name, never a stale entry.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sys
from pathlib import Path

from workflow.base.cache import cache_dir, keep

REPO = Path(__file__).resolve().parents[2]
# Files of these kinds that a module names are code it runs (compiled, or inlined into a
# page), so their bytes belong to its code version; no map of them is kept by hand.
CODE_DATA_SUFFIXES = (".c", ".h", ".js", ".css")


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
    """Every module ``path`` imports anywhere (also inside functions), with the packages
    each import runs; ``_parsed`` keeps the ``workflow`` ones."""
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
    return modules


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


# Bumped when what a parsed entry holds, or how it is made, changes.
CACHE_FORMAT = 2


@functools.lru_cache(maxsize=None)
def _parsed(path: Path, stamp: tuple[int, int]) -> tuple[str, frozenset[str], frozenset[str]]:
    """(the code as its syntax tree says it, the workflow modules it imports, the names of code
    files it reads: string constants ending in CODE_DATA_SUFFIXES) of a .py file."""
    data = path.read_bytes()
    key = hashlib.sha256(f"{CACHE_FORMAT}\0{sys.version}\0{path.relative_to(REPO)}\0".encode() + data).hexdigest()
    entry = cache_dir() / "codeversion" / f"{key}.json"
    try:
        kept = json.loads(entry.read_text(encoding="utf-8"))
        text, modules, data_names = kept["code"], kept["imports"], kept["data"]
    except (OSError, ValueError, KeyError, TypeError):
        tree = ast.parse(data.decode("utf-8"), filename=str(path))
        modules = sorted(_imports(path, tree))
        text = ast.unparse(_without_docstrings(tree))
        data_names = sorted({node.value for node in ast.walk(_without_docstrings(ast.parse(data.decode("utf-8"))))
                             if isinstance(node, ast.Constant) and isinstance(node.value, str)
                             and node.value.endswith(CODE_DATA_SUFFIXES) and "\n" not in node.value})
        keep(entry, {"code": text, "imports": modules, "data": data_names})
    return text, frozenset(m for m in modules if _module_file(m) is not None), frozenset(data_names)


def _code_data(module: Path, names: frozenset[str]) -> list[Path]:
    """The files under ``module``'s folder whose names end with one of ``names`` (a bare
    name or a path below the folder), the code files the module reads."""
    if not names:
        return []
    return sorted(p for p in module.parent.rglob("*") if p.is_file() and p.suffix in CODE_DATA_SUFFIXES
                  and any(p.as_posix().endswith("/" + name.lstrip("/")) for name in names))


def code_files(script: str | os.PathLike[str], *also: str | os.PathLike[str]) -> list[Path]:
    """``script`` and every file of this repository it runs: the ``workflow`` modules it
    imports, what they import in turn, and the files they read as code (``_code_data``).
    ``also``: further files it runs that no import names (the package of the experiment a
    generic evaluation script is asked for, ``workflow/experiments/exp001/__init__.py``)."""
    seen: set[Path] = set()
    pending = [(REPO / path).resolve() for path in (script, *also)]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.suffix == ".py":
            stat = path.stat()
            _, imports, data_names = _parsed(path, (stat.st_mtime_ns, stat.st_size))
            pending.extend(_module_file(m) for m in imports)  # type: ignore[misc]
            pending.extend(_code_data(path, data_names))
    return sorted(seen)


def code_digests(script: str | os.PathLike[str], *also: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 (first 16 hex digits) of each file ``script`` runs (see code_files), by its
    syntax for Python: what a provenance record keeps so that a plan can name the file
    whose change made a job stale."""
    digests = {}
    for path in code_files(script, *also):
        digests[str(path.relative_to(REPO))] = hashlib.sha256(_code_text(path)).hexdigest()[:16]
    return digests


def _code_text(path: Path) -> bytes:
    if path.suffix == ".py":
        stat = path.stat()
        return _parsed(path, (stat.st_mtime_ns, stat.st_size))[0].encode()
    return path.read_bytes()


def code_version(script: str | os.PathLike[str], *also: str | os.PathLike[str]) -> str:
    """sha256 (first 16 hex digits) of what ``script`` runs, by its syntax, not its bytes.

    Each rule carries it as a param: Snakemake alone does not re-run a rule when a module
    its script imports changes. Python is hashed as its syntax tree without docstrings
    (``ast.unparse``), so comments, docstrings and formatting change nothing; other files
    (a C kernel) by their bytes. Which modules count is read from the imports.
    """
    digest = hashlib.sha256()
    for path in code_files(script, *also):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + _code_text(path) + b"\0")
    return digest.hexdigest()[:16]

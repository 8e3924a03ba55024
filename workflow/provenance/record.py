"""Provenance records: what each artefact was made from.

A provenance record per rule run, ``results/001/provenance/{name}.prov.json``
  (a declared output of the rule, written with its artefacts): sha256 of each
  artefact and each input, the rule's params (the config subset it used), the code
  version of its script, package versions, and
  rule-specific facts (model source hash or revision; evaluator settings and cache
  keys).

What the records are checked against: ``workflow/provenance/plan.py`` (every Snakemake plan) and
``workflow/provenance/check.py`` (``make check``). The code version of a rule comes from its params
(``workflow/provenance/codeversion.py`` computes it when the rules are read); the record also keeps
each code file's digest, so that a plan can name the file that changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any
from workflow.base.atomic import write_json
from workflow.provenance.codeversion import code_digests

RECORD_SUFFIX = ".prov.json"
# A derived directory (a prepared model, a trained lens: git-ignored, re-creatable) holds
# its recipe: the rule, params, code and inputs that made it. Consumers record the recipe's
# hash instead of the directory's bytes, so that re-creating it the same way (on a fresh
# clone, where resources/ is empty) makes nothing that read it stale.
RECIPE_FILE = ".recipe.json"
# Files at least this large keep their sha256 in a cache (.snakemake/provenance-digests.json),
# so that a dry run does not hash a 60 GB GGUF again; smaller ones are hashed each time.
CACHED_DIGEST_SIZE = 16 * 2**20
DIGEST_CACHE = Path(".snakemake") / "provenance-digests.json"

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


def _hash_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


_digests: dict[tuple, str] = {}
# The folder whose .snakemake/ keeps the cache: the working directory (a Snakemake run's),
# or the API's and lens-chat's workdir while they check a model (``digests_kept_in``).
_cache_root: Path = Path(".")


@contextlib.contextmanager
def digests_kept_in(workdir: str | os.PathLike[str]):
    """Within the block the digest cache is ``workdir``'s, the one the pipeline run there
    keeps: lens-chat or a notebook started elsewhere does not hash its GGUF files again."""
    global _cache_root
    saved, _cache_root = _cache_root, Path(workdir)
    try:
        yield
    finally:
        _cache_root = saved


def cache_file(name: str | os.PathLike[str]) -> Path:
    """``name`` under the .snakemake/ folder that keeps the digest cache (``digests_kept_in``)."""
    return _cache_root / DIGEST_CACHE.parent / name


def _digest_cache() -> dict[str, Any]:
    try:
        cache = json.loads(cache_file(DIGEST_CACHE.name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _stat_key(path: str | os.PathLike[str]) -> tuple:
    """What identifies a version of a file without reading it. Size, modification time and
    inode can all be the same for other bytes: ``tar -x`` or ``cp -p`` of another model of
    the same size sets the archived time, and a new file may get a freed inode. The change
    time cannot be set: the kernel sets it to the present on every write, create, rename or
    utime, which no tool (tar, touch, utime) can give a past value (short of setting the
    system clock back), so a file written since has another key. The device tells the same
    inode number on two filesystems apart. A chmod or a new hard link also changes the
    change time: the file is hashed once more, which costs time, never a wrong digest."""
    stat = os.stat(path)
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, remembered by its version (``_stat_key``) in this process and, for
    large files, across processes in .snakemake/ (a cache only: another stat hashes again;
    hashing reads the whole file, a few seconds per GB)."""
    key = _stat_key(path)
    if key in _digests:
        return _digests[key]
    name = "\0".join(map(str, key))
    large = key[1] >= CACHED_DIGEST_SIZE
    cache = _digest_cache() if large else {}
    digest = cache.get(name)
    if not isinstance(digest, str):
        digest = _hash_file(path)
        if _stat_key(path) != key:
            return digest  # written while it was read: this digest names no version of it
        if large:
            # One entry per file: the entries of its earlier versions go.
            cache = {k: v for k, v in cache.items() if not k.startswith(key[0] + "\0")}
            cache[name] = digest
            try:

                target = cache_file(DIGEST_CACHE.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                write_json(target, cache)
            except OSError:
                pass  # a read-only checkout hashes again next time
    _digests[key] = digest
    return digest


def normalised(value: Any) -> Any:
    """``value`` as it reads back from a record's JSON (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def recipe_hash(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def recipe_of(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The recipe a derived directory was made by, or None (none written, or unreadable)."""
    try:
        recipe = json.loads((Path(path) / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recipe if isinstance(recipe, dict) else None


def input_digest(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a file; for a derived directory, ``recipe:`` and its recipe's hash; for
    another directory (a local model's), of its file names, sizes and contents: every file
    hashed, however large (a model's weights are its largest files), through the digest
    cache, so a local model is read once per version of its files."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    recipe = recipe_of(path)
    if recipe is not None:
        return "recipe:" + recipe_hash(recipe)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".snakemake", RECIPE_FILE))):
        digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\0{sha256_file(file)}\n".encode())
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


# more than 6 parameters: the record's fields, each given by the rule's script
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
    commit, which changes with every commit of results, goes to the job's log instead).
    Derived inputs (directories with a recipe) are recorded by their recipe's hash, and
    their recipes are kept beside, so that a plan can say what would be made differently."""

    missing = [a for a in artefacts if not Path(a).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot record provenance of missing artefacts {missing}")
    names = sorted(set(map(str, inputs)))
    recipes = {name: recipe for name in names if (recipe := recipe_of(name)) is not None}
    return {
        "rule": rule,
        "artefacts": {str(a): sha256_file(a) for a in artefacts},
        "inputs": {name: input_digest(name) for name in names},
        **({"recipes": recipes} if recipes else {}),
        "params": normalised({k: v for k, v in params.items() if k not in ("code", "code_also")}),
        # also: code the script runs that no import in it names (an experiment's package).
        "code": {
            "script": script,
            "version": version,
            **({"also": list(also)} if also else {}),
            "files": code_digests(script, *(also or [])),
        },
        "packages": package_versions(),
        **(extra or {}),
    }


def write_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    write_json(path, record)


_recorded: set[str] = set()


def _log_code(snakemake: Any) -> None:
    import logging

    state = git_state()
    logging.getLogger(__name__).info("code: %s, git commit %s%s", snakemake.params.code, state["commit"],
                                     " with uncommitted changes" if state["dirty"] else "")


def record_rule(snakemake: Any, script: str | None = None, artefacts: list[str] | None = None,
                extra: dict[str, Any] | None = None) -> None:
    """Write the provenance record of a running rule to its ``provenance`` output, after
    every artefact is written. ``artefacts``: by default every other output of the rule."""
    _log_code(snakemake)
    version = snakemake.params.code  # the code version the rule carries (workflow/provenance/codeversion.py)
    params = {k: v for k, v in snakemake.params.items()}
    record_file = str(snakemake.output.provenance)
    if artefacts is None:
        artefacts = [str(f) for f in snakemake.output if str(f) != record_file]
    record = make_record(snakemake.rule, script or f"scripts/{snakemake.rule}.py", version, artefacts,
                         list(snakemake.input), params, extra, params.get("code_also"))
    write_record(record_file, record)
    _recorded.add(record_file)


def write_recipe(snakemake: Any, directory: str) -> None:
    """Write a derived directory's recipe (RECIPE_FILE in it): the rule, all its params
    (the code version among them) and its inputs' digests, as the plan computes them."""

    _log_code(snakemake)
    params = normalised({k: v for k, v in snakemake.params.items()})
    inputs = {name: input_digest(name) for name in sorted(set(map(str, snakemake.input)))}
    write_json(Path(directory) / RECIPE_FILE, {"rule": snakemake.rule, "params": params, "inputs": inputs})


def finish_rule(snakemake: Any) -> None:
    """After a rule script's work: its provenance record, if the script has not written
    it, or the recipe of the derived directory it made."""
    names = dict(snakemake.output.items())
    if "provenance" in names:
        if str(names["provenance"]) not in _recorded:
            record_rule(snakemake)
    elif len(snakemake.output) == 1 and Path(str(snakemake.output[0])).parts[:1] == ("resources",):
        write_recipe(snakemake, str(snakemake.output[0]))

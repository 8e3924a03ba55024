"""Run the real Snakemake workflow in a scratch copy of the repository."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "scripts", "prompts", "config", "workflow", "profiles", "data"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def session_root(tmp_path_factory) -> Path:
    """The directory every process of this test session shares: the session's base
    temporary directory, or with pytest-xdist (``make test`` runs two workers) its parent,
    which holds each worker's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _exclusive(lock: Path):
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """``session_root/shared/name``, made by ``build(path)`` once per test session: the
    first process to ask builds it while the others wait for it, then all read it (a
    build that failed is tried again by the next to ask)."""
    root = session_root(tmp_path_factory) / "shared"
    root.mkdir(exist_ok=True)
    target, done = root / name, root / f"{name}.done"
    with _exclusive(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            build(target)
            done.touch()
    return target


def prepared_model(key: str, tmp_path_factory) -> Path:
    """An embedded model's prepared weights: the repository's own, or prepared here from its
    package, once per test session (read only: tests load from it, never write)."""
    from workflow.gguf.prepare import prepare_model

    path = REPO / "resources" / "models" / key
    if (path / "manifest.json").is_file():
        return path
    entry = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"][key]
    return built_once(tmp_path_factory, f"prepared-{key}", lambda target: prepare_model(key, entry, target))


def scratch_copy(dest: Path, config: dict | None = None) -> Path:
    """Copy the workflow (not results, resources or logs) to ``dest``; optionally replace its config."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    if config is not None:
        write_config(dest, config)
    return dest


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def snakemake(workdir: Path, *args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(env or os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [*SNAKEMAKE, "--cores", "1", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def files_under(path: Path) -> list[str]:
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and ".snakemake_timestamp" not in p.name)


def planned_jobs(dry_run_output: str) -> Counter:
    """(rule, model or name wildcard or None) of every job a dry run plans, with counts; `all` left out."""
    jobs: Counter = Counter()
    rule = None
    model = None
    for line in dry_run_output.splitlines() + ["rule end:"]:
        match = re.match(r"^(?:local)?rule (\w+):", line)
        if match:
            if rule and rule not in ("all", "end"):
                jobs[(rule, model)] += 1
            rule, model = match.group(1), None
        wildcard = re.match(r"^\s+wildcards: .*(?:model|name)=([^,\s]+)", line)
        if wildcard:
            model = wildcard.group(1)
    return jobs


def finished_run(dest: Path, config: dict | None = None, *targets: str, cores: int = 2) -> Path:
    """A scratch copy run to completion (the default target unless ``targets`` are given), on
    two cores unless ``cores`` says otherwise (the files are the same on any number:
    tests/test_reproducible.py)."""
    workdir = scratch_copy(dest, config)
    result = snakemake(workdir, "--cores", str(cores), *targets)
    assert result.returncode == 0, said(result)[-4000:]
    return workdir


def shared_run(tmp_path_factory, config: dict, *targets: str, cores: int = 2) -> Path:
    """A finished run of ``config`` (to ``targets``, on ``cores``), built once per test session
    and shared by every module (and test worker) asking for the same: the pipelines of the
    suite are its slowest part. Read it in place; ``private_copy`` it before anything that
    changes it (a run, an edit, a report)."""
    key = hashlib.sha256(json.dumps([config, targets, cores], sort_keys=True).encode()).hexdigest()[:16]
    return built_once(tmp_path_factory, f"run-{key}", lambda target: finished_run(target, config, *targets, cores=cores))


def said_by_commands(run: Path) -> Path:
    """Where ``commands_run`` keeps what each of its commands printed: beside the run."""
    return run.with_name(run.name + ".said.json")


def commands_run(dest: Path, config: dict, commands: list[str]) -> Path:
    """A scratch copy in which the Snakemake command lines ``commands`` run in turn, as
    written, then the default target on two cores; what each command printed, and its exit
    status, kept in ``said_by_commands(dest)``. Fails if any of them fails."""
    workdir = scratch_copy(dest, config)
    kept = {}
    for command in commands:
        words = command.split()
        assert words[0] == "snakemake", command
        result = snakemake(workdir, *words[1:])
        kept[command] = {"returncode": result.returncode, "said": said(result)}
        assert result.returncode == 0, (command, said(result)[-4000:])
    said_by_commands(dest).write_text(json.dumps(kept), encoding="utf-8")
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, said(result)[-4000:]
    return workdir


def private_copy(workdir: Path, dest: Path) -> Path:
    """A copy of a finished workflow for one test to change (file times and Snakemake's
    metadata kept)."""
    shutil.copytree(workdir, dest, symlinks=True)
    return dest


def said(result: subprocess.CompletedProcess) -> str:
    """Everything Snakemake printed (it reports some errors on stdout, others on stderr)."""
    return result.stdout + result.stderr


def planning_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """The one line a mistake found while planning ends the run with: Snakemake's last word,
    ``Error: ...`` holding ``words``, with no traceback, exception name or wildcards around
    it, and no lock left behind."""
    assert result.returncode == 1, said(result)[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), said(result)[-3000:]
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    for noise in ("Traceback", "Exception", "Wildcards:", 'File "'):
        assert noise not in said(result), (noise, said(result)[-3000:])
    return lines[-1]


def same_rank_elsewhere(ours: int, theirs: int) -> bool:
    """A token's rank recomputed on another machine: equal in the top 10 (the top-k the
    records list). float32 logits agree across CPUs (and MKL's kernels) to about 1e-5, a
    tuned lens trained there to about 1e-4, and below the top the tokens crowd (Gemma's
    vocabulary is 262k): a rank can move by the tokens within that noise of the answer's
    probability (seen: 4305 against 4306 through the logit lens, 77 against 78 through
    the tuned lens)."""
    if ours == theirs:
        return True
    return min(ours, theirs) > 10 and abs(ours - theirs) <= max(1.0, 1e-3 * theirs)

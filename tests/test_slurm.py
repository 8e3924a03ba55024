"""Cluster execution: the SLURM profile's resources, and the tiny pipeline run as real SLURM jobs.

The end-to-end test starts a single-node SLURM cluster on this machine (tests/slurm_cluster.py)
and is skipped, saying why, where the machine cannot run one; `.ci/run` installs Debian's
slurm-wlm and munge so that it runs in CI.
"""

import importlib.util
import math
import re

import pytest
import yaml

from conftest import tiny_config
from pipeline import said, scratch_copy, snakemake
from slurm_cluster import ClusterUnavailable, start
from workflow.model.resources import lens_resources, model_parameters

PLUGIN = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None
needs_plugin = pytest.mark.skipif(not PLUGIN, reason='snakemake-executor-plugin-slurm is not installed (pip install -e ".[cluster]")')


def job_resources(dry_run_output: str, rule: str) -> dict[str, dict[str, str]]:
    """model -> resources of each job of ``rule`` in a dry run's output."""
    found, current, model = {}, None, None
    for line in dry_run_output.splitlines():
        header = re.match(r"^(?:local)?rule (\w+):", line)
        if header:
            current, model = header.group(1), None
        elif current == rule and (m := re.match(r"^\s+wildcards: model=(\S+)", line)):
            model = m.group(1)
        elif current == rule and model and (m := re.match(r"^\s+resources: (.*)$", line)):
            found[model] = dict(item.split("=", 1) for item in m.group(1).split(", "))
    return found


@needs_plugin
def test_slurm_profile_dry_run_shows_each_lens_jobs_resources(tiny_dirs, tmp_path):
    config = tiny_config(tiny_dirs)
    config["models"]["tiny-gemma3"]["resources"] = {"mem_mb": 12345, "runtime": 7}
    workdir = scratch_copy(tmp_path / "wd", config)
    result = snakemake(workdir, "--profile", "profiles/slurm", "-n")
    assert result.returncode == 0, said(result)[-3000:]
    lens = job_resources(said(result), "run_lens")
    assert set(lens) == {"tiny-llama", "tiny-gemma3"}
    for model, resources in lens.items():
        assert resources["gpu"] == "1" and resources["slurm_partition"] == "gpu" and resources["gpu_model"] == "a100"
        assert resources["slurm_account"] == "CHANGE-ME" and resources["cpus_per_task"] == "8"
    # The estimate follows the parameter count, read from the safetensors headers...
    from transformers import AutoModelForCausalLM

    entry = config["models"]["tiny-llama"]
    parameters = AutoModelForCausalLM.from_pretrained(entry["path"]).num_parameters()
    assert model_parameters(entry) == parameters
    profile = yaml.safe_load((workdir / "profiles/slurm/config.yaml").read_text())
    expected = lens_resources(entry, {**config, **profile["config"]})
    assert int(lens["tiny-llama"]["mem_mb"]) == expected["mem_mb"] >= math.ceil(parameters * 2 / 1e6)  # bf16 weights
    assert int(lens["tiny-llama"]["runtime"]) == expected["runtime"]
    # ... and a model's own resources entry wins.
    assert lens["tiny-gemma3"]["mem_mb"] == "12345" and lens["tiny-gemma3"]["runtime"] == "7"


def test_lens_resources_scale_with_the_model_and_device():
    big = {"source": "local", "path": "/nonexistent"}
    # No readable weights: a stated fallback, and a GPU only where the device is cuda.
    assert lens_resources(big, {"device": "cpu"})["gpu"] == 0
    assert lens_resources(big, {"device": "cuda"})["gpu"] == 1
    assert lens_resources({**big, "device": "cuda"}, {"device": "cpu"})["gpu"] == 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not PLUGIN:
        pytest.skip('snakemake-executor-plugin-slurm is not installed (pip install -e ".[cluster]")')
    try:
        running = start(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as why:
        pytest.skip(f"cannot start a SLURM cluster here: {why}")
    yield running
    running.stop()


# Experiment 001 to its last evaluation and pages: model jobs and light rules of every kind
# (the other experiments' are the same rules' kin).
TARGETS = ("results/001/evaluation-meta.md", "results/001/html/evaluation-meta.html", "results/001/html/explorer-tiny-llama.html")


def test_pipeline_runs_its_lens_jobs_as_slurm_jobs(cluster, tiny_dirs, tmp_path):
    workdir = scratch_copy(tmp_path / "wd", tiny_config(tiny_dirs))
    result = snakemake(
        workdir,
        "--executor", "slurm",
        "--jobs", "4",
        "--default-resources", "slurm_partition=lens",
        "--slurm-no-account",
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "1",
        "--latency-wait", "10",
        *TARGETS,
        env=cluster.env,
        timeout=900,
    )
    assert result.returncode == 0, said(result)[-4000:] + cluster.logs()
    job_ids = set()
    for model in ("tiny-llama", "tiny-gemma3"):
        log = (workdir / "logs" / "001" / f"run_lens-{model}.log").read_text()
        match = re.search(r"rule run_lens running in SLURM job (\d+)", log)
        assert match, log
        job_ids.add(match.group(1))
        assert (workdir / "results" / "001" / f"output-{model}-records.csv").is_file()
    assert len(job_ids) == 2
    # SLURM itself knows those jobs, finished.
    queue = cluster.run("squeue", "--states=all", "--noheader", "--format=%i %T").stdout
    states = dict(line.split() for line in queue.splitlines())
    assert all(states.get(job) == "COMPLETED" for job in job_ids), queue
    # Light rules ran where Snakemake runs (a login node), not as cluster jobs.
    output = said(result)
    for rule in ("evaluate_model", "evaluate_cross", "evaluate_meta", "plot_heatmaps", "plot_cross", "evaluation_page", "explorer"):
        assert f"localrule {rule}:" in output, rule
    assert "localrule run_lens:" not in output
    assert "SLURM job" not in (workdir / "logs" / "001" / "evaluate_cross.log").read_text()
    assert (workdir / "results" / "001" / "evaluation-meta.md").is_file()
    assert snakemake(workdir, "-n", *TARGETS).stdout.count("Nothing to be done") == 1

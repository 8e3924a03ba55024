"""Failing runs lose nothing and say why, and what can be checked before work is checked then.

Each case is one a user ran into: a damaged GGUF, a wrong local path, a provider without
its key or model, a device the machine lacks, a hand-damaged records CSV (made again), settings that
make a job fail, an LLM server that is down.
"""

import shutil

import pytest

from conftest import TUNED, tiny_config
from pipeline import planning_error, private_copy, said, scratch_copy, snakemake, write_config

@pytest.fixture
def built(tuned_run):
    """The session's finished run with both lenses (conftest), read only."""
    return tuned_run


@pytest.fixture
def workdir(tuned_run, tmp_path):
    return private_copy(tuned_run, tmp_path / "wd")


def snapshot(workdir, *parts):
    """Every file under the given folders, by content."""
    found = {}
    for part in parts:
        for path in sorted((workdir / part).rglob("*")):
            if path.is_file() and not path.name.startswith(".snakemake"):
                found[str(path.relative_to(workdir))] = path.read_bytes()
    return found


def with_config(workdir, tiny_dirs, **changes):
    config = tiny_config(tiny_dirs, **TUNED)
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    write_config(workdir, config)


# ------------------------------------------------------------ refused when planning


def gguf_config(tiny_dirs, path):
    config = tiny_config(tiny_dirs)
    config["models"] = {"broken": {"source": "gguf", "path": str(path)}}
    return config


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_a_damaged_gguf_is_refused_when_planning(damage, tiny_dirs, tmp_path):
    from gguf_writer import write_gguf

    path = tmp_path / "model.gguf"
    if damage == "text":
        path.write_text("this is a text file, renamed\n")
        expected = "it does not start with the GGUF magic"
    else:
        whole = write_gguf(tiny_dirs["llama"], tmp_path / "whole.gguf", "llama").read_bytes()
        path.write_bytes(whole[: len(whole) * 2 // 3])
        expected = "it is truncated"
    workdir = scratch_copy(tmp_path / "wd", gguf_config(tiny_dirs, path))
    result = snakemake(workdir, "-n")
    assert result.returncode != 0
    out = said(result)
    assert "model 'broken'" in out and "config key models.broken.path" in out and expected in out, out[-2000:]
    assert "Traceback (most recent call last)" not in out and "IndexError" not in out and "GGUF magic invalid" not in out


def test_damaged_weights_headers_are_refused_before_the_job(tiny_dirs, tmp_path):
    damaged = tmp_path / "damaged-llama"
    shutil.copytree(tiny_dirs["llama"], damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:1000])
    config = tiny_config(tiny_dirs)
    config["models"]["tiny-llama"]["path"] = str(damaged)
    workdir = scratch_copy(tmp_path / "wd", config)
    result = snakemake(workdir, "results/001/output-tiny-llama.json")
    assert result.returncode != 0
    assert "the weights file's header cannot be read" in said(result) and "JSONDecodeError" in said(result)
    assert not (workdir / "logs/001/run_lens-tiny-llama.log").exists()  # no job started


def test_a_missing_local_directory_is_refused_when_planning(tiny_dirs, tmp_path):
    config = tiny_config(tiny_dirs)
    config["models"]["tiny-llama"]["path"] = str(tmp_path / "nowhere")
    workdir = scratch_copy(tmp_path / "wd", config)
    result = snakemake(workdir, "-n")
    planning_error(result, "'tiny-llama'", "does not exist (config key models.tiny-llama.path")


@pytest.mark.parametrize("evaluation, expected", [
    ({"provider": "openai", "model": "m"}, "the environment variable OPENAI_API_KEY is not set"),
    ({"provider": "anthropic"}, "evaluation.model is required for provider 'anthropic'"),
])
def test_provider_settings_are_checked_when_planning(evaluation, expected, workdir, tiny_dirs, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "placeholder")
    before = snapshot(workdir, "results")
    with_config(workdir, tiny_dirs, evaluation=evaluation)
    for args in (["-n"], []):
        result = snakemake(workdir, *args)
        planning_error(result, expected)
    assert snapshot(workdir, "results") == before  # nothing deleted, nothing rewritten
    assert not any((workdir / ".snakemake" / "locks").glob("*"))  # the run that stopped holds no lock


def test_a_device_that_is_not_there_is_refused_before_any_job(workdir, tiny_dirs):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    before = snapshot(workdir, "results", "resources")
    with_config(workdir, tiny_dirs, device="cuda")
    result = snakemake(workdir)
    planning_error(result, "device: cuda was requested but no CUDA device is available", "(config key device)")
    assert snapshot(workdir, "results", "resources") == before  # the trained lens is still there


def test_config_errors_from_the_command_line_blame_the_command_line(workdir):
    result = snakemake(workdir, "-n", "--config", "lens={top_k: ten}")
    planning_error(result, "--config on the command line: invalid value at key 'lens.top_k'")
    assert "config/config.yaml: invalid" not in said(result)


def test_a_damaged_records_csv_is_made_again_not_read(workdir):
    """A records file edited by hand no longer matches its provenance record: the plan says
    so and makes it again (nothing is drawn or evaluated from the damaged file), and the
    lens run writes back the bytes it wrote before."""
    records = workdir / "results" / "001" / "output-tiny-llama-records.csv"
    original = records.read_bytes()
    lines = records.read_text().splitlines(keepends=True)
    records.write_text("".join(lines[:5] + lines[6:]))  # one row deleted by hand
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, said(result)[-3000:]
    assert "output-tiny-llama-records.csv was changed after run_lens wrote it" in said(result)
    result = snakemake(workdir)
    assert result.returncode == 0, said(result)[-3000:]
    assert records.read_bytes() == original
    assert "Nothing to be done" in said(snakemake(workdir, "-n"))


def test_a_records_csv_that_does_not_fit_its_json_is_refused_by_the_job(built, tmp_path):
    from workflow.base.errors import UserError
    from workflow.lens.records import load_checked

    results = built / "results" / "001"
    short = tmp_path / "records.csv"
    lines = (results / "output-tiny-llama-records.csv").read_text().splitlines(keepends=True)
    short.write_text("".join(lines[:-1]))
    with pytest.raises(UserError, match=r"has \d+ rows, but .*output-tiny-llama.json describes \d+ .*run snakemake again"):
        load_checked(short, results / "output-tiny-llama.json")
    import json

    summary = json.loads((results / "output-tiny-llama.json").read_text())
    rows = sum(2 * (summary["n_layers"] + 1) * len(p["input_ids"]) for p in summary["probes"])  # two lenses
    assert len(load_checked(results / "output-tiny-llama-records.csv", results / "output-tiny-llama.json")) == rows


# ------------------------------------------------------------ failing jobs keep what they would replace


def test_a_failing_lens_job_keeps_the_committed_records(workdir, tiny_dirs, tmp_path):
    """The model's weights are cut short (their header intact) where the config now points:
    planning reads only the header, loading fails when the job runs."""
    damaged = tmp_path / "damaged-llama"
    shutil.copytree(tiny_dirs["llama"], damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    before = snapshot(workdir, "results")
    config = tiny_config(tiny_dirs, **{**TUNED, "lenses": ["logit"]})  # no training in the way
    config["models"]["tiny-llama"]["path"] = str(damaged)
    write_config(workdir, config)
    result = snakemake(workdir, "--keep-going", "results/001/output-tiny-llama.json")
    assert result.returncode != 0
    log = (workdir / "logs/001/run_lens-tiny-llama.log").read_text()
    assert "rule run_lens failed" in log and "SafetensorError" in log
    assert "Restored previous version of results/001/output-tiny-llama.json" in said(result)
    assert snapshot(workdir, "results") == before
    # What is there is what was made before, each file as its record says (nothing modified or
    # missing), and stale: the config now asks for another model and lenses.
    check = provenance_check(workdir)
    found = {line.split()[1]: line.split()[0] for line in check.stdout.splitlines()[:-1]}
    assert not {"modified", "missing"} & set(found.values()), check.stdout
    assert found["results/001/output-tiny-llama.json"] == "stale"
    assert "Nothing to be done" not in said(snakemake(workdir, "-n", "results/001/output-tiny-llama.json"))


def test_the_outputs_a_failed_job_never_made_are_reported_missing(workdir, tiny_dirs, tmp_path):
    """A new model whose first job fails: no record names its outputs, but the plan makes
    them, so `make check` reports them missing and fails, as `snakemake -n` plans them."""
    damaged = tmp_path / "damaged-llama"
    shutil.copytree(tiny_dirs["llama"], damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])  # the header intact: it fails when loaded
    config = tiny_config(tiny_dirs, **TUNED)
    config["models"]["tiny-broken"] = {"source": "local", "path": str(damaged)}
    write_config(workdir, config)
    result = snakemake(workdir, "--keep-going", "results/001/output-tiny-broken.json")
    assert result.returncode != 0
    assert not (workdir / "results/001/output-tiny-broken.json").exists()
    check = provenance_check(workdir)
    assert check.returncode == 1, check.stdout[-3000:]
    found = {line.split()[1]: line.split()[0] for line in check.stdout.splitlines()[:-1]}
    for name in ("results/001/output-tiny-broken.json", "results/001/output-tiny-broken-records.csv",
                 "results/001/evaluation-tiny-broken.md", "results/003/output-tiny-broken.json"):
        assert found.get(name) == "missing", (name, check.stdout[-3000:])
    assert found["results/001/output-tiny-llama.json"] == "ok"


def test_a_failing_training_keeps_the_trained_lens(workdir, tiny_dirs):
    """Without a ridge term, fewer positions than the width leave the fit undetermined."""
    before = snapshot(workdir, "results", "resources/lenses")
    with_config(workdir, tiny_dirs, tuned_lens={"ridge": 0, "train_sequences": 1, "seq_len": 8})
    result = snakemake(workdir, "--keep-going")
    assert result.returncode != 0
    log = (workdir / "logs/lenses/train_tuned_lens-tiny-llama.log").read_text()
    assert "fewer training positions" in log and "ridge" in log
    assert snapshot(workdir, "results", "resources/lenses") == before


def test_an_llm_server_that_is_down_keeps_the_committed_evaluation(workdir, tiny_dirs, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", "placeholder")
    before = snapshot(workdir, "results")
    with_config(workdir, tiny_dirs, evaluation={"provider": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1",
                                                "max_retries": 0, "timeout": 5})
    result = snakemake(workdir, "--keep-going")
    assert result.returncode != 0
    assert "Connection error." in (workdir / "logs/001/evaluate_model-tiny-llama.log").read_text()
    assert "Connection error.." not in said(result)
    assert snapshot(workdir, "results") == before


def provenance_check(workdir):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "workflow.provenance.check"], cwd=workdir, capture_output=True, text=True,
                          timeout=300)

"""Dry runs that tell the truth, re-running only what a change invalidates; the provenance check."""

import shutil

import pytest
import yaml

from conftest import tiny_config
from pipeline import finished_run, planned_jobs, said, snakemake

MODELS = ["tiny-llama", "tiny-gemma3", "tiny-gguf"]
LENS = {("run_lens", m) for m in MODELS}
PER_MODEL_EVALS = {("evaluate_model", m) for m in MODELS}
# An evaluation's HTML page (rule evaluation_page) follows its markdown.
MODEL_PAGES = {("evaluation_page", m) for m in MODELS}
CROSS_AND_META = {("evaluate_cross", None), ("evaluate_meta", None), ("evaluation_page", "cross-model"), ("evaluation_page", "meta")}
PLOTS = {("plot_heatmaps", m) for m in MODELS} | {("plot_statistics", m) for m in MODELS} | {("plot_cross", None)}
# Experiment 003 decodes generated tokens with the same lens settings: its jobs follow the lens's.
GENERATION = {("run_generation", m) for m in MODELS} | {("plot_generation", m) for m in MODELS} | {("plot_generation_cross", None)}


@pytest.fixture(scope="module")
def built(tiny_dirs, tmp_path_factory):
    """The tiny models, one of them also as a GGUF file (so prepare_model runs)."""
    from gguf_writer import write_gguf

    root = tmp_path_factory.mktemp("provenance")
    config = tiny_config(tiny_dirs)
    gguf = write_gguf(tiny_dirs["llama"], root / "tiny-llama.gguf", "llama")
    config["models"]["tiny-gguf"] = {"source": "gguf", "path": str(gguf), "description": "the tiny Llama as GGUF"}
    return finished_run(root / "wd", config)


@pytest.fixture
def workdir(built, tmp_path):
    """A private copy of the finished workflow (mtimes and Snakemake metadata kept)."""
    copy = tmp_path / "wd"
    shutil.copytree(built, copy, symlinks=True)
    return copy


def plan(workdir):
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, said(result)[-3000:]
    return set(planned_jobs(said(result)))


def edit_config(workdir, change):
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def provenance_check(workdir):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "workflow.check"], cwd=workdir, capture_output=True, text=True, timeout=300
    )


def statuses(result):
    lines = [line.split() for line in result.stdout.splitlines()[:-1]]
    return {parts[1]: parts[0] for parts in lines}


def test_nothing_to_be_done_after_a_full_run(workdir):
    result = snakemake(workdir, "-n")
    assert "Nothing to be done" in said(result)


def test_check_passes_on_fresh_results(workdir):
    result = provenance_check(workdir)
    assert result.returncode == 0, result.stdout
    found = statuses(result)
    assert set(found.values()) == {"ok"}
    assert "results/001/output-tiny-llama-records.csv" in found and "results/001/evaluation-meta.md" in found


def test_check_passes_without_the_derived_resources_of_a_fresh_clone(workdir):
    """resources/ (prepared models, trained lenses) is git-ignored: a fresh clone has the
    committed results but not what they were made from; that is not staleness."""
    shutil.rmtree(workdir / "resources")
    result = provenance_check(workdir)
    assert result.returncode == 0, result.stdout
    assert "resources/models/tiny-gguf not here to re-hash: taken as recorded" in result.stdout
    (workdir / "results" / "001" / "output-tiny-llama.json").unlink()
    assert statuses(provenance_check(workdir))["results/001/output-tiny-llama.json"] == "missing"


def test_cross_template_edit_plans_cross_and_meta_only(workdir):
    with open(workdir / "prompts" / "001" / "cross-model-evaluation.md", "a") as fh:
        fh.write("\nBe brief.\n")
    assert plan(workdir) == CROSS_AND_META
    result = provenance_check(workdir)
    assert result.returncode != 0
    found = statuses(result)
    assert found["results/001/evaluation-cross-model.md"] == "stale"
    assert "prompts/001/cross-model-evaluation.md changed" in result.stdout
    assert found["results/001/evaluation-tiny-llama.md"] == "ok"


def test_single_model_template_edit_plans_evaluations_not_lens(workdir):
    with open(workdir / "prompts" / "001" / "single-model-evaluation.md", "a") as fh:
        fh.write("\nBe brief.\n")
    assert plan(workdir) == PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META


def test_lens_flag_plans_every_lens_job_and_downstream(workdir):
    edit_config(workdir, lambda c: c["lens"].update(top_k=4))
    assert plan(workdir) == LENS | PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META | PLOTS | GENERATION


def test_new_probe_plans_every_lens_job(workdir):
    edit_config(workdir, lambda c: c["probes"].append({"id": "extra", "prompt": "Paris is in", "answer": " France"}))
    assert LENS <= plan(workdir)


def test_new_model_plans_only_its_chain_plus_cross_and_meta(workdir, tiny_dirs):
    edit_config(workdir, lambda c: c["models"].update({"tiny-extra": {"source": "local", "path": str(tiny_dirs["llama"])}}))
    assert plan(workdir) == {
        ("run_lens", "tiny-extra"),
        ("evaluate_model", "tiny-extra"),
        ("plot_heatmaps", "tiny-extra"),
        ("plot_statistics", "tiny-extra"),
        ("evaluation_page", "tiny-extra"),
        ("plot_cross", None),
        ("run_generation", "tiny-extra"),
        ("plot_generation", "tiny-extra"),
        ("plot_generation_cross", None),
    } | CROSS_AND_META


def test_comments_docstrings_and_formatting_plan_nothing(workdir):
    lens = workdir / "workflow" / "lens.py"
    text = lens.read_text()
    assert text.startswith('"""')
    lens.write_text(text.replace('"""', '"""An edited docstring. ', 1).replace("\n\n\n", "\n\n\n\n", 1) + "\n# a comment\n")
    script = workdir / "scripts" / "run_lens.py"
    script.write_text(script.read_text() + "\n# a comment in the rule's script\n")
    assert plan(workdir) == set()
    assert provenance_check(workdir).returncode == 0


def test_lens_code_edit_plans_the_lens_jobs(workdir):
    with open(workdir / "workflow" / "lens.py", "a") as fh:
        fh.write("\nEDITED = 1\n")
    planned = plan(workdir)
    assert LENS <= planned and not any(rule == "prepare_model" for rule, _ in planned)
    result = provenance_check(workdir)
    assert statuses(result)["results/001/output-tiny-llama.json"] == "stale"
    assert "the code of scripts/run_lens.py (or of a workflow/ module it imports) changed" in result.stdout


def test_plotting_code_edit_plans_the_plots_and_what_shows_them(workdir):
    with open(workdir / "workflow" / "plots.py", "a") as fh:
        fh.write("\nEDITED = 1\n")
    planned = plan(workdir)
    assert PLOTS <= planned
    assert not any(rule in ("run_lens", "prepare_model") for rule, _ in planned)


def test_description_and_scheduler_resources_plan_nothing(workdir):
    edit_config(workdir, lambda c: c["models"]["tiny-gguf"].update(description="relabelled", resources={"mem_mb": 999}))
    assert plan(workdir) == set()


def test_dtype_edit_reruns_the_lens_not_the_dequantisation(workdir):
    edit_config(workdir, lambda c: c["models"]["tiny-gguf"].update(dtype="bfloat16"))
    planned = plan(workdir)
    assert ("run_lens", "tiny-gguf") in planned
    assert not any(rule == "prepare_model" for rule, _ in planned)
    assert not any(model in ("tiny-llama", "tiny-gemma3") and rule == "run_lens" for rule, model in planned)


def test_evaluator_change_plans_the_evaluations_only(workdir):
    edit_config(workdir, lambda c: c.setdefault("evaluation", {}).update(model="another-analyst"))
    assert plan(workdir) == PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META


def test_meta_only_override_plans_meta_only(workdir):
    edit_config(workdir, lambda c: c.setdefault("evaluation", {}).update(stages={"meta": {"model": "stronger"}}))
    assert plan(workdir) == {("evaluate_meta", None), ("evaluation_page", "meta")}


def test_hand_edit_is_reported_as_modified(workdir):
    path = workdir / "results" / "001" / "evaluation-tiny-gemma3.md"
    path.write_text(path.read_text().replace("Summary", "Summary (edited)", 1))
    result = provenance_check(workdir)
    assert result.returncode != 0
    assert statuses(result)["results/001/evaluation-tiny-gemma3.md"] == "modified"


def test_unrecorded_file_is_reported(workdir):
    (workdir / "results" / "001" / "notes.md").write_text("my notes\n")
    result = provenance_check(workdir)
    assert result.returncode != 0
    assert statuses(result)["results/001/notes.md"] == "unrecorded"


def test_a_killed_lens_job_is_planned_again_and_restored_byte_for_byte(workdir):
    """SIGKILL of a running lens job (and Snakemake with it): the dry run must plan the job
    again (Snakemake marked its outputs incomplete; the previous ones are still there, kept
    by update() and never half-written) and the next run writes the same bytes as before."""
    import os
    import signal
    import subprocess
    import time

    from pipeline import SNAKEMAKE

    outputs = ["results/001/output-tiny-llama.json", "results/001/output-tiny-llama-records.csv",
               "results/001/provenance/output-tiny-llama.prov.json"]
    before = {name: (workdir / name).read_bytes() for name in outputs}
    log = workdir / "logs" / "001" / "run_lens-tiny-llama.log"
    log.unlink()
    job = subprocess.Popen([*SNAKEMAKE, "--cores", "1", "--forcerun", "run_lens", "results/001/output-tiny-llama.json"],
                           cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (log.is_file() and "rule run_lens with" in log.read_text()):
        assert job.poll() is None and time.monotonic() < deadline, "the lens job never started"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert "wrote" not in log.read_text()  # killed before it could write anything
    assert not list((workdir / "results" / "001").glob(".*tmp*"))  # no half-written file
    assert snakemake(workdir, "--unlock").returncode == 0
    assert ("run_lens", "tiny-llama") in plan(workdir)
    result = snakemake(workdir)
    assert result.returncode == 0, said(result)[-3000:]
    assert {name: (workdir / name).read_bytes() for name in outputs} == before


def test_a_deleted_provenance_record_is_planned_again(workdir):
    (workdir / "results" / "001" / "provenance" / "output-tiny-gemma3.prov.json").unlink()
    assert ("run_lens", "tiny-gemma3") in plan(workdir)

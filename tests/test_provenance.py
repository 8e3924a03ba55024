"""Dry runs that tell the truth, re-running only what a change invalidates; the provenance check."""

import os
import shutil

import pytest
import yaml

from conftest import tiny_config
from pipeline import planned_jobs, private_copy, said, snakemake, write_config

from pipeline import REPO

MODELS = ["tiny-llama", "tiny-gemma3", "tiny-gguf"]
DERIVED = ("prepare_model", "train_tuned_lens")
MODEL_JOBS = ("run_lens", "run_generation", "run_patching")
LENS = {("run_lens", m) for m in MODELS}
PER_MODEL_EVALS = {("evaluate_model", m) for m in MODELS}
# An evaluation's HTML page (rule evaluation_page) follows its markdown.
MODEL_PAGES = {("evaluation_page", m) for m in MODELS}
CROSS_AND_META = {("evaluate_cross", None), ("evaluate_meta", None), ("evaluation_page", "cross-model"), ("evaluation_page", "meta")}
# The explorer pages (rule explorer, one per experiment and model) follow the records they show.
EXPLORERS = {("explorer", m) for m in MODELS}
PLOTS = {("plot_heatmaps", m) for m in MODELS} | {("plot_statistics", m) for m in MODELS} | {("plot_cross", None)} | EXPLORERS
# Experiment 005 reads its own prompts with the lens code and each model's weights: its jobs
# follow the lens's code and a model's settings, not the probes.
WORDS = {("run_words", m) for m in MODELS} | {("plot_words", m) for m in MODELS} | {("plot_words_cross", None)}
# Experiment 003 decodes generated tokens with the same lens settings: its jobs follow the lens's.
GENERATION = {("run_generation", m) for m in MODELS} | {("plot_generation", m) for m in MODELS} | {("plot_generation_cross", None)}


@pytest.fixture(scope="module")
def built(default_run, tiny_dirs, tmp_path_factory):
    """The tiny models, one of them also as a GGUF file (so prepare_model runs): the session's
    finished run of the two (conftest's ``default_run``) with the GGUF model added and run."""
    from gguf_writer import write_gguf

    root = tmp_path_factory.mktemp("provenance")
    config = tiny_config(tiny_dirs)
    gguf = write_gguf(tiny_dirs["llama"], root / "tiny-llama.gguf", "llama")
    config["models"]["tiny-gguf"] = {"source": "gguf", "path": str(gguf), "description": "the tiny Llama as GGUF"}
    workdir = private_copy(default_run, root / "wd")
    write_config(workdir, config)
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, said(result)[-4000:]
    return workdir


@pytest.fixture(scope="module")
def committed(built, tmp_path_factory):
    """The finished workflow as a git repository with its results committed (resources/,
    .snakemake/ and logs/ are git-ignored, as in the project)."""
    import subprocess

    repo = tmp_path_factory.mktemp("committed") / "wd"
    shutil.copytree(built, repo, symlinks=True)
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "results"]):
        subprocess.run(["git", *command], cwd=repo, check=True)
    return repo


@pytest.fixture(params=["used", "clone"])
def workdir(request, built, committed, tmp_path):
    """A private checkout of the finished workflow: ``used``, the one that ran it (file
    times, Snakemake's metadata and resources/ kept), or ``clone``, a fresh `git clone` of
    its committed results (new file times, no .snakemake/, no resources/)."""
    import subprocess

    copy = tmp_path / "wd"
    if request.param == "used":
        shutil.copytree(built, copy, symlinks=True)
    else:
        subprocess.run(["git", "clone", "-q", str(committed), str(copy)], check=True)
    return copy


@pytest.fixture
def used(built, tmp_path):
    """The used checkout alone, for tests that run jobs: there Snakemake's own history is
    there to be wrong (a clone would first have to prepare its models again)."""
    copy = tmp_path / "used"
    shutil.copytree(built, copy, symlinks=True)
    return copy


def is_clone(workdir):
    return not (workdir / "resources").exists()


def core(planned):
    """The jobs a change plans, less the derived resources (prepare_model, train_tuned_lens)
    that a fresh clone has to make again before a model job can run."""
    return {job for job in planned if job[0] not in DERIVED}


def assert_plan(workdir, expected):
    """The plan is ``expected``; on a fresh clone, also the derived resources of the models
    whose jobs run, and nothing else."""
    planned = plan(workdir)
    assert core(planned) == expected
    derived = planned - expected
    if is_clone(workdir):
        running = {model for rule, model in expected if rule in MODEL_JOBS}
        assert {model for _, model in derived} <= running, derived
    else:
        assert derived == set(), derived


def plan(workdir):
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, said(result)[-3000:]
    return set(planned_jobs(said(result)))


def edit_config(workdir, change):
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def assert_stale(workdir, why, expected):
    """The dry run says ``why`` for tiny-llama's lens job, naming its record, and plans
    ``expected``; make check reports its JSON stale for the same reason."""
    result = snakemake(workdir, "-n")
    assert f"run_lens tiny-llama: {why} (results/001/provenance/output-tiny-llama.prov.json)" in said(result)
    assert_plan(workdir, expected)
    result = provenance_check(workdir)
    assert statuses(result)["results/001/output-tiny-llama.json"] == "stale"
    assert why in result.stdout


def provenance_check(workdir):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "workflow.provenance.check"], cwd=workdir, capture_output=True, text=True, timeout=300
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


def test_a_missing_artefact_is_reported_and_planned(workdir):
    (workdir / "results" / "001" / "output-tiny-llama.json").unlink()
    assert statuses(provenance_check(workdir))["results/001/output-tiny-llama.json"] == "missing"
    assert ("run_lens", "tiny-llama") in plan(workdir)


def test_cross_template_edit_plans_cross_and_meta_only(workdir):
    with open(workdir / "prompts" / "001" / "cross-model-evaluation.md", "a") as fh:
        fh.write("\nBe brief.\n")
    result = snakemake(workdir, "-n")
    assert core(set(planned_jobs(said(result)))) == CROSS_AND_META
    # The dry run says why, in the project's words, naming the record.
    assert ("evaluate_cross 001: prompts/001/cross-model-evaluation.md changed since it was read "
            "(results/001/provenance/evaluation-cross-model.prov.json)") in said(result)
    result = provenance_check(workdir)
    assert result.returncode != 0
    found = statuses(result)
    assert found["results/001/evaluation-cross-model.md"] == "stale"
    assert "prompts/001/cross-model-evaluation.md changed since it was read" in result.stdout
    assert found["results/001/evaluation-tiny-llama.md"] == "ok"


def test_single_model_template_edit_plans_evaluations_not_lens(workdir):
    with open(workdir / "prompts" / "001" / "single-model-evaluation.md", "a") as fh:
        fh.write("\nBe brief.\n")
    assert_plan(workdir, PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META)


def test_lens_setting_plans_the_lens_jobs_and_what_reads_them(workdir):
    edit_config(workdir, lambda c: c["lens"].update(top_k=4))
    assert_stale(workdir, "lens.top_k 3 -> 4", LENS | PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META | PLOTS | GENERATION)


def test_positions_plans_the_lens_not_generation(workdir):
    """Generation decodes the last position whatever lens.positions says: it does not read it."""
    edit_config(workdir, lambda c: c["lens"].update(positions="last"))
    assert_plan(workdir, LENS | PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META | PLOTS)


def test_run_only_lens_settings_plan_nothing(workdir):
    edit_config(workdir, lambda c: c["lens"].update(batch_size=2, heatmap_probes=12))
    assert plan(workdir) == set()


def test_new_probe_plans_the_lens_and_generation_of_every_model(workdir):
    edit_config(workdir, lambda c: c["probes"].append({"id": "extra", "prompt": "Paris is in", "answer": " France"}))
    result = snakemake(workdir, "-n")
    assert "run_lens tiny-gemma3: probes: extra added" in said(result)
    assert_plan(workdir, LENS | PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META | PLOTS | GENERATION)


def test_removed_probe_plans_the_lens_and_generation_of_every_model(workdir):
    edit_config(workdir, lambda c: c.update(probes=c["probes"][:2]))
    assert_plan(workdir, LENS | PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META | PLOTS | GENERATION)


def test_new_model_plans_only_its_chain_plus_cross_and_meta(workdir, tiny_dirs):
    edit_config(workdir, lambda c: c["models"].update({"tiny-extra": {"source": "local", "path": str(tiny_dirs["llama"])}}))
    assert_plan(workdir, {
        ("run_lens", "tiny-extra"),
        ("evaluate_model", "tiny-extra"),
        ("plot_heatmaps", "tiny-extra"),
        ("plot_statistics", "tiny-extra"),
        ("explorer", "tiny-extra"),
        ("evaluation_page", "tiny-extra"),
        ("plot_cross", None),
        ("run_generation", "tiny-extra"),
        ("plot_generation", "tiny-extra"),
        ("plot_generation_cross", None),
        ("run_words", "tiny-extra"),
        ("plot_words", "tiny-extra"),
        ("plot_words_cross", None),
    } | CROSS_AND_META)


def test_removed_model_plans_cross_and_meta_only(workdir):
    edit_config(workdir, lambda c: c["models"].pop("tiny-gemma3"))
    assert_plan(workdir, {("plot_cross", None), ("plot_generation_cross", None), ("plot_words_cross", None)} | CROSS_AND_META)


def test_comments_docstrings_and_formatting_plan_nothing(workdir):
    lens = workdir / "workflow" / "lens" / "readout.py"
    text = lens.read_text()
    assert text.startswith('"""')
    lens.write_text(text.replace('"""', '"""An edited docstring. ', 1).replace("\n\n\n", "\n\n\n\n", 1) + "\n# a comment\n")
    script = workdir / "scripts" / "run_lens.py"
    script.write_text(script.read_text() + "\n# a comment in the rule's script\n")
    assert plan(workdir) == set()
    assert provenance_check(workdir).returncode == 0


def test_lens_code_edit_plans_the_jobs_whose_code_imports_it(workdir):
    with open(workdir / "workflow" / "lens" / "readout.py", "a") as fh:
        fh.write("\nEDITED = 1\n")
    # The lens, generation and 005 (the same lens code); not the preparation, which does not import it.
    assert_stale(workdir, "code changed: workflow/lens/readout.py",
                 LENS | PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META | PLOTS | GENERATION | WORDS)


def test_plotting_code_edit_plans_the_plots_and_what_shows_them(workdir):
    with open(workdir / "workflow" / "report" / "plots.py", "a") as fh:
        fh.write("\nEDITED = 1\n")
    planned = core(plan(workdir))
    assert PLOTS - EXPLORERS <= planned
    # Neither the records nor the explorer pages (which draw without matplotlib) are made again.
    assert not any(rule in ("run_lens", "run_generation", "explorer") for rule, _ in planned)


def test_description_and_scheduler_resources_plan_nothing(workdir):
    edit_config(workdir, lambda c: c["models"]["tiny-gguf"].update(description="relabelled", resources={"mem_mb": 999}))
    assert plan(workdir) == set()


def test_one_models_dtype_plans_that_models_jobs_only(workdir):
    edit_config(workdir, lambda c: c["models"]["tiny-gguf"].update(dtype="bfloat16"))
    assert_plan(workdir, {
        ("run_lens", "tiny-gguf"), ("plot_heatmaps", "tiny-gguf"), ("plot_statistics", "tiny-gguf"), ("explorer", "tiny-gguf"),
        ("evaluate_model", "tiny-gguf"), ("evaluation_page", "tiny-gguf"), ("plot_cross", None),
        ("run_generation", "tiny-gguf"), ("plot_generation", "tiny-gguf"), ("plot_generation_cross", None),
        ("run_words", "tiny-gguf"), ("plot_words", "tiny-gguf"), ("plot_words_cross", None),
    } | CROSS_AND_META)


def test_evaluator_change_plans_the_evaluations_only(workdir):
    edit_config(workdir, lambda c: c.setdefault("evaluation", {}).update(model="another-analyst"))
    assert_plan(workdir, PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META)


def test_evaluator_provider_plans_the_evaluations_only(workdir, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    edit_config(workdir, lambda c: c.update(evaluation={"provider": "openai", "model": "gpt-test"}))
    assert_plan(workdir, PER_MODEL_EVALS | MODEL_PAGES | CROSS_AND_META)


def test_meta_only_override_plans_meta_only(workdir):
    edit_config(workdir, lambda c: c.setdefault("evaluation", {}).update(stages={"meta": {"model": "stronger"}}))
    assert_plan(workdir, {("evaluate_meta", None), ("evaluation_page", "meta")})


def test_hand_edit_is_reported_and_made_again(workdir):
    path = workdir / "results" / "001" / "evaluation-tiny-gemma3.md"
    path.write_text(path.read_text().replace("Summary", "Summary (edited)", 1))
    result = provenance_check(workdir)
    assert result.returncode != 0
    assert statuses(result)["results/001/evaluation-tiny-gemma3.md"] == "modified"
    result = snakemake(workdir, "-n")
    assert "results/001/evaluation-tiny-gemma3.md was changed after evaluate_model wrote it" in said(result)
    assert_plan(workdir, {("evaluate_model", "tiny-gemma3"), ("evaluation_page", "tiny-gemma3")} | CROSS_AND_META)


def test_a_hand_edited_records_file_is_made_again_not_read(workdir):
    path = workdir / "results" / "001" / "output-tiny-llama-records.csv"
    path.write_text(path.read_text().replace("0.", "0.9", 3))
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, said(result)[-2000:]
    assert "results/001/output-tiny-llama-records.csv was changed after run_lens wrote it" in said(result)
    assert ("run_lens", "tiny-llama") in plan(workdir)


def test_unrecorded_file_is_reported(workdir):
    (workdir / "results" / "001" / "notes.md").write_text("my notes\n")
    result = provenance_check(workdir)
    assert result.returncode != 0
    assert statuses(result)["results/001/notes.md"] == "unrecorded"


def test_a_changed_gguf_source_is_planned_again(workdir, built, tiny_dirs, tmp_path):
    """Another file behind the same model key: its preparation and everything made from it."""
    from gguf_writer import write_gguf

    other = write_gguf(tiny_dirs["gemma3"], tmp_path / "other.gguf", "gemma3")
    edit_config(workdir, lambda c: c["models"]["tiny-gguf"].update(path=str(other)))
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, said(result)[-2000:]
    planned = plan(workdir)
    assert ("prepare_model", "tiny-gguf") in planned and ("run_lens", "tiny-gguf") in planned
    assert not any(model in ("tiny-llama", "tiny-gemma3") for rule, model in planned if rule in MODEL_JOBS)
    assert "resources/models/tiny-gguf would be made differently" in said(result)


@pytest.mark.parametrize("broken", ["missing", "not-gguf"])
def test_a_broken_source_is_refused_while_planning_even_when_prepared(workdir, broken, tmp_path):
    path = tmp_path / "broken.gguf"
    if broken == "not-gguf":
        path.write_bytes(b"not a gguf file at all" * 10)
    edit_config(workdir, lambda c: c["models"]["tiny-gguf"].update(path=str(path)))
    result = snakemake(workdir, "-n")
    assert result.returncode != 0
    assert "tiny-gguf" in said(result) and "Traceback" not in said(result)


def test_an_unreadable_gguf_architecture_is_refused_while_planning(workdir, built, tmp_path):
    """A GGUF whose general.architecture this pipeline cannot read: the dry run says so."""
    source = yaml.safe_load((workdir / "config" / "config.yaml").read_text())["models"]["tiny-gguf"]["path"]
    data = bytearray(open(source, "rb").read())
    at = data.find(b"llama", data.find(b"general.architecture"))
    data[at:at + 5] = b"lamma"
    path = tmp_path / "unknown-arch.gguf"
    path.write_bytes(bytes(data))
    edit_config(workdir, lambda c: c["models"]["tiny-gguf"].update(path=str(path)))
    result = snakemake(workdir, "-n")
    assert result.returncode != 0
    assert "this pipeline cannot read GGUF architecture 'lamma'" in said(result)
    assert "Traceback" not in said(result)


def kill_job(workdir, rule, key, target, *args):
    """Start Snakemake on ``target`` and SIGKILL it (and its job) once ``rule`` runs for ``key``."""
    import signal
    import subprocess
    import time

    from pipeline import SNAKEMAKE

    log = next(workdir.glob(f"logs/*/{rule}-{key}.log"), None) or workdir / "logs" / "001" / f"{rule}-{key}.log"
    log.unlink(missing_ok=True)
    job = subprocess.Popen([*SNAKEMAKE, "--cores", "1", *args, target],
                           cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (log.is_file() and f"rule {rule} with" in log.read_text()):
        assert job.poll() is None and time.monotonic() < deadline, f"the {rule} job never started"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert snakemake(workdir, "--unlock").returncode == 0
    return log


def kill_lens_job(workdir, *args):
    log = kill_job(workdir, "run_lens", "tiny-llama", "results/001/output-tiny-llama.json", *args)
    assert "wrote" not in log.read_text()  # killed before it could write anything
    assert not list((workdir / "results" / "001").glob(".*tmp*"))  # no half-written file


def test_a_run_killed_while_preparing_a_model_just_runs_again(used):
    """Killed during a job with a directory output: Snakemake's backup copy and the job's
    temporary directory are left behind; the next run must simply work."""
    kill_job(used, "prepare_model", "tiny-gguf", "resources/models/tiny-gguf", "--forcerun", "prepare_model")
    result = snakemake(used)
    assert result.returncode == 0, said(result)[-3000:]
    assert not list((used / "resources" / "models").glob(".*tmp*"))
    assert not (used / ".snakemake" / "backups" / "resources" / "models" / "tiny-gguf").exists()
    assert plan(used) == set()


def test_a_killed_job_with_a_new_setting_leaves_its_outputs_stale(used):
    """A job with a new setting that dies: its previous outputs are what is there, and the
    next plan runs it again, whatever Snakemake recorded of the attempt."""
    edit_config(used, lambda c: c["lens"].update(top_k=4))
    kill_lens_job(used)
    assert '"top_k": 3' in (used / "results" / "001" / "output-tiny-llama.json").read_text()
    shutil.rmtree(used / ".snakemake" / "incomplete", ignore_errors=True)  # not what decides
    assert ("run_lens", "tiny-llama") in plan(used)


def test_a_killed_lens_job_with_nothing_changed_is_not_planned_again_and_a_forced_run_restores_it(used):
    """SIGKILL of a running lens job (and Snakemake with it) that was forced with nothing
    changed: the previous outputs are still there (kept by update() and never half-written)
    and match their record, so the dry run plans nothing, whatever Snakemake marked
    incomplete; a forced run writes the same bytes as before, and what reads them, newer
    than it now, is still current."""
    outputs = ["results/001/output-tiny-llama.json", "results/001/output-tiny-llama-records.csv",
               "results/001/provenance/output-tiny-llama.prov.json"]
    before = {name: (used / name).read_bytes() for name in outputs}
    kill_lens_job(used, "--forcerun", "run_lens")
    assert plan(used) == set()
    result = snakemake(used, "--forcerun", "run_lens", "--", outputs[0])
    assert result.returncode == 0, said(result)[-3000:]
    assert {name: (used / name).read_bytes() for name in outputs} == before
    assert plan(used) == set()


def test_a_deleted_provenance_record_is_planned_again(workdir):
    (workdir / "results" / "001" / "provenance" / "output-tiny-gemma3.prov.json").unlink()
    assert ("run_lens", "tiny-gemma3") in plan(workdir)


@pytest.mark.parametrize("kernel", ["lens_block.c", "dequant.c"])
def test_a_c_kernel_edit_plans_exactly_the_jobs_that_run_it(used, kernel):
    """Each C source is in the code version of exactly the jobs whose results it can change:
    the lens kernel in the jobs that run the lens, not in prepare_model, which never runs
    it; dequant.c in prepare_model, whose weights it makes, and in the lens jobs, which
    read a `weights: quantised` model through it. (Before each kernel had a loader of its
    own, editing the lens kernel re-prepared every GGUF model and editing dequant.c re-ran
    nothing.) This run has the lens and generation jobs; test_codeversion.py checks the
    other rules' scripts."""
    with open(used / "workflow" / "native" / kernel, "a") as fh:
        fh.write("\n/* edited */\n")
    result = snakemake(used, "-n")
    assert result.returncode == 0, said(result)[-3000:]
    planned = {rule for rule, _ in planned_jobs(said(result))}
    assert {"run_lens", "run_generation"} <= planned, planned
    assert f"run_lens tiny-llama: code changed: workflow/native/{kernel}" in said(result)
    assert ("prepare_model" in planned) == (kernel == "dequant.c"), planned
"""What a new user meets: a `git clone` of this repository (committed results, no
.snakemake/, no resources/, new file times), and the dry runs of the README's table
("Is this result current?") on the embedded models' committed results."""

import os
import subprocess
from collections import Counter

import pytest
import yaml

from pipeline import REPO, planned_jobs, planning_error, said, snakemake
from workflow.evaluation.experiment import registered

MODELS = ["smollm2-135m-instruct", "gemma-3-270m"]
# Every registered experiment (001-004) has committed results and evaluations.
EXPERIMENTS = len(registered())
DERIVED = ("prepare_model", "train_tuned_lens")


def per_model(*rules):
    return {(rule, model) for rule in rules for model in MODELS}


EVALUATIONS = per_model("evaluate_model", "evaluation_page") | {
    ("evaluate_cross", None), ("evaluate_meta", None), ("evaluation_page", "cross-model"), ("evaluation_page", "meta")
}
LENS_001 = per_model("run_lens", "plot_heatmaps", "plot_statistics", "explorer") | {("plot_cross", None)}
GENERATION_003 = per_model("run_generation", "plot_generation") | {("plot_generation_cross", None)}


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """This repository's HEAD (what a user clones)."""
    return REPO


@pytest.fixture
def clone(origin, tmp_path):
    path = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(path)], check=True)
    return path


def dry_run(clone, *args, env=None):
    result = snakemake(clone, "-n", *args, env=env)
    assert result.returncode == 0, said(result)[-3000:]
    return result


def jobs(result):
    """(rule, model) of the planned jobs, less the derived resources a clone does not have."""
    return {job for job in planned_jobs(said(result)) if job[0] not in DERIVED}


def stale_block(text):
    """The dry run's list of jobs stale by their records."""
    lines = text.split("Stale according to the provenance records", 1)[-1].splitlines()[1:]
    return "\n".join(line for line in lines[: next((i for i, l in enumerate(lines) if not l.startswith("    ")), len(lines))])


def by_rule(result):
    counts = Counter()
    for (rule, _), n in planned_jobs(said(result)).items():
        counts[rule] += n
    return counts


def edit_config(clone, change):
    path = clone / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def test_a_fresh_clone_has_nothing_to_do(clone):
    result = dry_run(clone)
    assert "Nothing to be done" in said(result)
    assert "missing provenance/metadata" not in said(result)


def test_a_lens_setting_plans_the_lens_and_what_reads_it(clone):
    result = dry_run(clone, "--config", "lens={top_k: 10}")
    # Experiment 002's evaluations and depth figure read 001's JSON too.
    assert jobs(result) == LENS_001 | GENERATION_003 | EVALUATIONS | {("plot_patching_cross", None)}
    assert "run_lens smollm2-135m-instruct: lens.top_k 5 -> 10 (results/001/provenance/output-smollm2-135m-instruct.prov.json)" in said(result)
    # Patching does not read top_k; the tuned lens is trained only because a clone has none.
    assert not any(rule == "run_patching" for rule, _ in planned_jobs(said(result)))


def test_a_components_setting_plans_experiment_004_alone(clone):
    result = dry_run(clone, "--config", "components={top_k: 3}")
    assert jobs(result) == per_model("run_components", "plot_components", "explorer") | {("plot_components_cross", None)} | EVALUATIONS
    assert "run_components gemma-3-270m: components.top_k 10 -> 3 (results/004/provenance/output-gemma-3-270m.prov.json)" in said(result)
    # Only experiment 004's results: its evaluations and explorer pages, no other experiment's
    # (a clone also plans the prepared models it does not have, under resources/).
    outputs = [line.split(":", 1)[1].strip() for line in said(result).splitlines() if line.strip().startswith("output:")]
    results = [line for line in outputs if line.startswith("results/")]
    assert len(results) == len(outputs) - 2 and all(line.startswith("results/004/") for line in results), results


ITALY = {"id": "capital-italy", "prompt": "The capital of Italy is", "answer": " Rome"}


def test_a_new_probe_plans_the_lens_and_generation_not_patching(clone):
    """First in the set, the probe is among generation.max_probes (9): both experiments run it."""
    edit_config(clone, lambda c: c["probes"].insert(0, dict(ITALY)))
    result = dry_run(clone)
    planned = jobs(result)
    assert per_model("run_lens", "run_generation") <= planned
    assert not any(rule == "run_patching" for rule, _ in planned)
    assert "probes: capital-italy added" in said(result)


def test_a_probe_beyond_generation_max_probes_plans_the_lens_only(clone):
    edit_config(clone, lambda c: c["probes"].append(dict(ITALY)))
    planned = jobs(dry_run(clone))
    assert per_model("run_lens") <= planned
    assert not any(rule in ("run_generation", "run_patching") for rule, _ in planned)


def test_the_evaluator_plans_the_evaluations_only(clone):
    env = {**os.environ, "OPENAI_API_KEY": "sk-not-used-in-a-dry-run"}
    result = dry_run(clone, "--config", "evaluation={provider: openai, model: gpt-test}", env=env)
    assert by_rule(result) == {
        "evaluate_model": EXPERIMENTS * len(MODELS), "evaluate_cross": EXPERIMENTS, "evaluate_meta": EXPERIMENTS,
        "evaluation_page": EXPERIMENTS * (len(MODELS) + 2),
    }


def test_a_template_edit_plans_that_stage(clone):
    with open(clone / "prompts" / "002" / "meta-evaluation.md", "a") as fh:
        fh.write("\nBe brief.\n")
    result = dry_run(clone)
    assert jobs(result) == {("evaluate_meta", None), ("evaluation_page", "meta")}
    assert "results/002/provenance/evaluation-meta.prov.json" in said(result)


def test_a_statement_in_the_lens_code_plans_its_importers_not_preparation(clone):
    with open(clone / "workflow" / "lens" / "readout.py", "a") as fh:
        fh.write("\nEDITED = 1\n")
    result = dry_run(clone)
    planned = jobs(result)
    assert per_model("run_lens") <= planned
    assert "code changed: workflow/lens/readout.py" in said(result)
    # A clone makes the prepared models again because it has none, not because they are stale.
    assert "prepare_model" not in stale_block(said(result))
    assert "run_lens smollm2-135m-instruct" in stale_block(said(result))


def test_a_docstring_or_comment_plans_nothing(clone):
    lens = clone / "workflow" / "lens" / "readout.py"
    lens.write_text(lens.read_text().replace('"""', '"""Edited. ', 1) + "\n# a comment\n")
    assert "Nothing to be done" in said(dry_run(clone))


def test_batch_size_plans_nothing(clone):
    assert "Nothing to be done" in said(dry_run(clone, "--config", "lens={batch_size: 2}"))


def test_one_models_dtype_plans_that_models_jobs(clone):
    edit_config(clone, lambda c: c["models"]["gemma-3-270m"].update(dtype="bfloat16"))
    result = dry_run(clone)
    planned = jobs(result)
    assert {model for _, model in planned if model in MODELS} == {"gemma-3-270m"}
    assert {("run_lens", "gemma-3-270m"), ("run_patching", "gemma-3-270m"), ("run_generation", "gemma-3-270m")} <= planned


def test_a_models_experiments_list_plans_only_the_comparisons_that_no_longer_read_it(clone):
    """SmolLM2 with ``experiments: ["001", "003"]``: none of its jobs is planned (its results
    of 001 and 003 are current: the list is no run param); experiments 002, 004 and 005
    compare Gemma alone, so only their cross-model figures and evaluations run again. A file
    of 002 asked for SmolLM2 is refused, naming the key."""
    edit_config(clone, lambda c: c["models"]["smollm2-135m-instruct"].update(experiments=["001", "003"]))
    result = dry_run(clone)
    planned = jobs(result)
    assert {model for _, model in planned} <= {None, "cross-model", "meta"}, planned
    assert {rule for rule, _ in planned} == {"plot_patching_cross", "plot_components_cross", "plot_words_cross", "evaluate_cross",
                                             "evaluate_meta", "evaluation_page"}, planned
    assert "no longer reads results/002/output-smollm2-135m-instruct.json" in said(result)
    assert by_rule(result)["evaluate_cross"] == 3  # 002's, 004's and 005's
    refused = snakemake(clone, "-n", "results/002/output-smollm2-135m-instruct.json")
    assert refused.returncode != 0
    planning_error(refused, "models.smollm2-135m-instruct.experiments", "lists 001, 003", 'add "002"')


def test_a_dry_run_names_the_jobs_expected_to_take_long(clone):
    """1,024 generated tokens after each of 189 probes: SmolLM2's generation reads the lens at
    every layer of 193,536 tokens over its 49k-token vocabulary (an estimate of an hour or more
    on two cores), and the dry run says so before anything starts, beside each job's
    ``expected_minutes``. The default plan names nothing. (Gemma's file is assembled by its
    package: it is estimated once prepared, which a clone has not done.)"""
    assert "Expected to take long" not in said(dry_run(clone, "--forceall"))
    result = dry_run(clone, "--config", "probes={relations: [company_ceo], directions: both, limit: 100}",
                     "generation={max_new_tokens: 1024, max_probes: 200}")
    text = said(result)
    lines = text.split("Expected to take long", 1)[1].splitlines()[1:]
    block = "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.startswith("    "))])
    assert "run_generation smollm2-135m-instruct: about " in block and "189 probes x 1024 generated tokens" in block  # 200 less 11 repeated
    assert "run_lens" not in block and "run_patching" not in block
    assert "expected_minutes=" in text

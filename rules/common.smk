# Config validation, wildcard constraints and input functions shared by all rules.
import os

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from workflow.config import (
    check_config,
    coerce_strings,
    describe_validation_error,
    model_entry,
    run_params,
    schema_violation,
    source_params,
)
from workflow.errors import UserError
from workflow.evaluation.providers import stage_settings
from workflow.models import PREPARED_SOURCES
from workflow.provenance import code_version
from workflow.resources import lens_resources, prepare_resources

CONFIGFILE = "config/config.yaml"
# The software of every rule, for --sdm conda (pinned as in pyproject.toml).
CONDA_ENV = "../workflow/envs/pipeline.yaml"
EXPERIMENT = "results/001"

SCHEMA = os.path.join(workflow.basedir, "config", "schema.yaml")
# What --config set on the command line: errors in it are blamed on --config, not the file.
OVERRIDES = workflow.config_settings.overwrite_config or {}

try:
    with open(SCHEMA, encoding="utf-8") as fh:
        coerce_strings(config, yaml.safe_load(fh))
    validate(config, schema=SCHEMA)
    check_config(config, CONFIGFILE)
except WorkflowError as e:
    cause = schema_violation(e)
    if cause is None:
        raise
    raise WorkflowError(describe_validation_error(cause, CONFIGFILE, OVERRIDES)) from None
except UserError as e:
    raise WorkflowError(str(e)) from None

# The model-heavy rules (prepare_model, train_tuned_lens, run_lens) ask for every core of
# the machine; Snakemake lowers that to --cores (and --max-threads), so `--cores 1` means
# one thread, and `--report`/`--unlock`/`--lint` need no --cores at all. Snakemake sets
# OMP_NUM_THREADS to a job's threads, which is what torch computes with.
MODEL_THREADS = os.cpu_count() or 1

MODELS = list(config["models"])
LENSES = config["lenses"]
CORPUS = "data/corpus.txt.gz"
PROBE_IDS = [p["id"] for p in config["probes"]]


wildcard_constraints:
    # Any key-like name; unknown keys get a clear error from the input functions.
    model=r"(?!cross-model$|meta$)[A-Za-z0-9][A-Za-z0-9._-]*",


def get_final_output():
    return [
        *expand(f"{EXPERIMENT}/plots/{{model}}/heatmap-{{probe}}.png", model=MODELS, probe=PROBE_IDS),
        f"{EXPERIMENT}/plots/cross-model-trajectories.png",
        *expand(f"{EXPERIMENT}/evaluation-{{model}}.md", model=MODELS),
        f"{EXPERIMENT}/evaluation-cross-model.md",
        f"{EXPERIMENT}/evaluation-meta.md",
        *expand(f"{EXPERIMENT}/html/evaluation-{{name}}.html", name=[*MODELS, "cross-model", "meta"]),
        *(expand(f"{EXPERIMENT}/lens-quality-{{model}}.csv", model=MODELS) if "tuned" in LENSES else []),
    ]


def get_model(wildcards):
    try:
        return model_entry(config, wildcards.model)
    except UserError as e:
        raise WorkflowError(str(e)) from None


def get_model_source(wildcards):
    """The params of prepare_model: only what decides the prepared weights."""
    return source_params(get_model(wildcards))


def get_model_settings(wildcards):
    """The params of the model rules: the entry without its description and resources."""
    return run_params(get_model(wildcards))


def get_gguf_input(wildcards):
    """A GGUF path on disk is an input, so a missing file is caught before running."""
    entry = get_model(wildcards)
    if entry["source"] == "gguf":
        if not os.path.isfile(os.path.expanduser(entry["path"])):
            raise WorkflowError(
                f"model {wildcards.model!r}: GGUF file {entry['path']!r} does not exist "
                f"(config key models.{wildcards.model}.path in {CONFIGFILE}); fix the path or download the file"
            )
        return [os.path.expanduser(entry["path"])]
    if entry["source"] != "package":
        raise WorkflowError(f"model {wildcards.model!r}: source {entry['source']!r} needs no preparation")
    return []


def get_lens_model_input(wildcards):
    """Prepared weights for GGUF/package sources; the directory itself for local ones."""
    entry = get_model(wildcards)
    if entry["source"] in PREPARED_SOURCES:
        return {"prepared": f"resources/models/{wildcards.model}"}
    if entry["source"] == "local":
        return {"local": os.path.expanduser(entry["path"])}
    return {}


def get_run_lens_input(wildcards):
    """The model's weights, and its trained tuned lens when experiment 001 records it."""
    inputs = get_lens_model_input(wildcards)
    if "tuned" in LENSES:
        inputs["tuned"] = f"resources/lenses/{wildcards.model}"
    return inputs


def get_lens_settings(wildcards):
    return config["lens"]


def lens_resource(name):
    """One of run_lens's resources (mem_mb, runtime, gpu), from the model's size and device.

    Evaluated again just before the job runs, when prepared weights exist."""

    def resource(wildcards, input):
        return lens_resources(get_model(wildcards), config, input.get("prepared"))[name]

    return resource


def prepare_resource(name):
    def resource(wildcards):
        return prepare_resources(get_model(wildcards))[name]

    return resource


def get_model_outputs(wildcards):
    """Every model's JSON summary and records CSV."""
    return {
        "outputs": expand(f"{EXPERIMENT}/output-{{model}}.json", model=MODELS),
        "records": expand(f"{EXPERIMENT}/output-{{model}}-records.csv", model=MODELS),
    }


def get_page_inputs(wildcards):
    """The evaluation and the figures it links (embedded into the page)."""
    name = wildcards.name
    if name in MODELS:
        figures = expand(f"{EXPERIMENT}/plots/{name}/heatmap-{{probe}}.png", probe=PROBE_IDS)
    elif name == "cross-model":
        figures = [f"{EXPERIMENT}/plots/cross-model-trajectories.png"]
    elif name == "meta":
        figures = []
    else:
        raise WorkflowError(
            f"no evaluation named {name!r}: pages exist for the models in {CONFIGFILE} "
            f"({', '.join(MODELS)}), 'cross-model' and 'meta'"
        )
    return {"evaluation": f"{EXPERIMENT}/evaluation-{name}.md", "figures": figures}


def page_category(wildcards):
    return {"cross-model": "Cross-model", "meta": "Method"}.get(wildcards.name, wildcards.name)

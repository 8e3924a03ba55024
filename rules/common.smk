# Config validation, wildcard constraints, input functions shared by all rules, and the
# registry of experiments (each rules/expNNN.smk registers what its rules make).
import os
import sys
from typing import Callable, NamedTuple

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from workflow.config.schema import (
    check_config,
    check_top_level_keys,
    coerce_strings,
    describe_validation_error,
    model_entry,
    effective_placement,
    run_params,
    schema_violation,
    source_params,
)
from workflow.base.errors import UserError
from workflow.base.limits import check_size
from workflow.config.probes import load as load_probes
from workflow.lens.records import records_format
from workflow.evaluation.providers import check_settings, stage_settings
from workflow.gguf.file import check as check_gguf
from workflow.gguf.prepare import PREPARED_SOURCES, source_fingerprint
from workflow.provenance.codeversion import code_version
from workflow.model.resources import lens_resources, prepare_resources

CONFIGFILE = "config/config.yaml"


def stop(message):
    """End the run with ``message``, one line on its own: a mistake in the config, a path or
    the environment found while the run is planned. (Raised as an exception, Snakemake
    prints it inside its own traceback and the input function's wildcards.) Planning has
    taken no lock, started no job and written nothing, so there is nothing to undo."""
    sys.exit(f"Error: {message}")


# The software of every rule, for --sdm conda (pinned as in pyproject.toml).
CONDA_ENV = "../workflow/envs/pipeline.yaml"

SCHEMA = os.path.join(workflow.basedir, "config", "schema.yaml")
# What --config set on the command line: errors in it are blamed on --config, not the file.
OVERRIDES = workflow.config_settings.overwrite_config or {}

try:
    with open(SCHEMA, encoding="utf-8") as fh:
        SCHEMA_DATA = yaml.safe_load(fh)
    # Before anything walks the config: keys the schema does not know, then its size.
    check_top_level_keys(config, SCHEMA_DATA, CONFIGFILE if not OVERRIDES else f"{CONFIGFILE} (with --config)")
    check_size(config, CONFIGFILE if not OVERRIDES else f"{CONFIGFILE} (with --config)")
    coerce_strings(config, SCHEMA_DATA)
    validate(config, schema=SCHEMA)
    check_config(config, CONFIGFILE, workflow.basedir)
    # The probe set (config key probes: a list, a file or shipped relations; workflow/config/probes.py).
    PROBES = load_probes(config["probes"], workflow.basedir, CONFIGFILE)
except WorkflowError as e:
    cause = schema_violation(e)
    if cause is None:
        raise
    stop(describe_validation_error(cause, CONFIGFILE, OVERRIDES))
except UserError as e:
    stop(str(e))

# The model-heavy rules (prepare_model, train_tuned_lens, run_lens) ask for every core of
# the machine; Snakemake lowers that to --cores (and --max-threads), so `--cores 1` means
# one thread, and `--report`/`--unlock`/`--lint` need no --cores at all. Snakemake sets
# OMP_NUM_THREADS to a job's threads, which is what torch computes with.
MODEL_THREADS = os.cpu_count() or 1

MODELS = list(config["models"])
LENSES = config["lenses"]
CORPUS = "data/corpus.txt.gz"


def models_of(experiment_id):
    """The models that run experiment ``experiment_id``: those whose entry lists it under
    ``experiments``, and every model whose entry has no such list."""
    return [m for m in MODELS if experiment_id in config["models"][m].get("experiments", [experiment_id])]


def check_runs(experiment_id, model):
    """A file of experiment ``experiment_id`` asked for a model that does not run it: refused,
    naming the config key (an unknown model is named by get_model)."""
    if model in MODELS and model not in models_of(experiment_id):
        listed = ", ".join(config["models"][model]["experiments"])
        stop(
            f"model {model!r} does not run experiment {experiment_id}: config key models.{model}.experiments in "
            f"{CONFIGFILE} lists {listed}; add \"{experiment_id}\" to it to run it"
        )


wildcard_constraints:
    # Any key-like name; unknown keys get a clear error from the input functions.
    # (not the names of the cross-model and meta evaluations).
    model=r"(?!(?:cross-model|meta)(?:\.md|\.prov|\.html|$))[A-Za-z0-9][A-Za-z0-9._-]*",
    exp=r"[0-9]{3}",


class ExperimentRules(NamedTuple):
    """What an experiment's rules make, for the generic evaluation chain (rules/evaluate.smk,
    rules/report.smk) and for rule all."""

    # The models that run it (models_of).
    models: list
    # A model's inputs to its evaluation by name: "summary" (its JSON) and "records" (its
    # records CSV), and any others its facts read (another experiment's outputs, say).
    model_inputs: Callable[[str], dict]
    # The figures a model's evaluation links, and the cross-model evaluation's.
    model_figures: Callable[[str], list]
    cross_figures: list
    # Everything the experiment's own rules make (outputs, records, provenance, figures).
    artefacts: list
    # Whether `snakemake` with no target builds it (an experiment the config gives nothing
    # to run, such as no patching pairs, is left out; its files can still be asked for).
    default: bool = True
    # The probes its explorer page shows (the interactive page of its records, made by the
    # explorer rule); None, every probe or pair in its JSON.
    explorer_probes: list | None = None


EXPERIMENTS: dict[str, ExperimentRules] = {}


def register_experiment(experiment_id, **rules):
    """Called once by each rules/expNNN.smk."""
    EXPERIMENTS[experiment_id] = ExperimentRules(models_of(experiment_id), **rules)


def experiment_rules(experiment_id):
    try:
        return EXPERIMENTS[experiment_id]
    except KeyError:
        stop(
            f"no experiment {experiment_id!r}: the experiments are {', '.join(sorted(EXPERIMENTS))} "
            "(each has its rules/expNNN.smk, included by the Snakefile)"
        )


EVALUATIONS = ["cross-model", "meta"]  # beside one per model


def get_final_output():
    """Every artefact a run produces under results/, so that a missing or deleted one (a
    job killed before it finished, a record deleted by hand) is planned again: Snakemake
    does not rebuild an intermediate file whose consumers are up to date."""
    outputs = []
    for experiment_id, rules in EXPERIMENTS.items():
        if not rules.default or not rules.models:
            continue
        results = f"results/{experiment_id}"
        names = [*rules.models, *EVALUATIONS]
        outputs += [
            *rules.artefacts,
            *expand(f"{results}/evaluation-{{name}}.md", name=names),
            *expand(f"{results}/provenance/evaluation-{{name}}.prov.json", name=names),
            *expand(f"{results}/html/evaluation-{{name}}.html", name=names),
            *expand(f"{results}/provenance/page-{{name}}.prov.json", name=names),
            *expand(f"{results}/html/explorer-{{model}}.html", model=rules.models),
            *expand(f"{results}/provenance/explorer-{{model}}.prov.json", model=rules.models),
        ]
    return outputs


def get_model(wildcards):
    try:
        return model_entry(config, wildcards.model)
    except UserError as e:
        stop(str(e))


def get_model_source(wildcards):
    """The params of prepare_model: only what decides the prepared weights."""
    return source_params(get_model(wildcards))


def get_model_settings(wildcards):
    """The params of the model rules: the entry without its description and resources,
    with its placement (the top-level one under the model's own) where it is not the
    default: a budget re-runs the model's jobs (their JSON records where the weights
    were), the default changes no params."""
    entry = get_model(wildcards)
    settings = run_params(entry)
    settings.pop("placement", None)
    placement = effective_placement(entry, config.get("placement"))
    if placement != effective_placement({}, None):
        settings["placement"] = placement
    return settings


def get_gguf_input(wildcards):
    """A GGUF path on disk is an input, checked when the workflow is planned: a missing,
    damaged or truncated file, or one whose architecture cannot be read, is refused before
    any job runs, naming the config key (get_source_fingerprint)."""
    entry = get_model(wildcards)
    if entry["source"] not in PREPARED_SOURCES:
        stop(f"model {wildcards.model!r}: source {entry['source']!r} needs no preparation")
    get_source_fingerprint(wildcards)
    return [os.path.expanduser(entry["path"])] if entry["source"] == "gguf" else []


def _user_errors(function, *args):
    """``function(*args)`` while the run is planned, a UserError ending the run (``stop``)."""
    try:
        return function(*args)
    except UserError as e:
        stop(str(e))


def _job_errors(function, *args):
    """``function(*args)`` for a job's resources, a UserError becoming the WorkflowError
    Snakemake reports for that job."""
    try:
        return function(*args)
    except UserError as e:
        raise WorkflowError(str(e)) from None


def check_device(wildcards):
    """A device the model's jobs ask for must be there when they are to run on this machine,
    checked when the run is planned, before any job. Not for a cluster (the jobs run on
    other nodes: a login node without a GPU submits them all the same), and not in a dry run,
    which cannot tell where the jobs would run (a profile may send them to a cluster)."""
    entry = get_model(wildcards)
    device = entry.get("device", config["device"])
    if device in ("cuda", "mps") and workflow.local_exec and not workflow.dryrun:
        from workflow.model.load import resolve_device

        try:
            resolve_device(device)
        except UserError as e:
            key = f"models.{wildcards.model}.device" if "device" in entry else "device"
            stop(f"model {wildcards.model!r} (config key {key}): {e}")


def model_input(experiment_id, tuned=False):
    """Input function of an experiment's model job: the model's weights (get_lens_model_input),
    and with ``tuned`` its trained tuned lens where config lenses has it; a model that does
    not run the experiment is refused (check_runs)."""

    def inputs(wildcards):
        check_runs(experiment_id, wildcards.model)
        lens = {"tuned": f"resources/lenses/{wildcards.model}"} if tuned and "tuned" in LENSES else {}
        return {**get_lens_model_input(wildcards), **lens}

    return inputs


def get_lens_model_input(wildcards):
    """Prepared weights for GGUF/package sources; the directory itself for local ones."""
    entry = get_model(wildcards)
    check_device(wildcards)
    if entry["source"] in PREPARED_SOURCES:
        return {"prepared": f"resources/models/{wildcards.model}"}
    if entry["source"] == "local":
        path = os.path.expanduser(entry["path"])
        if not os.path.isfile(os.path.join(path, "config.json")):
            what = "does not exist" if not os.path.exists(path) else "is not a Hugging Face model directory (no config.json)"
            stop(
                f"model {wildcards.model!r}: {entry['path']!r} {what} (config key models.{wildcards.model}.path "
                f"in {CONFIGFILE}); point it at a directory saved with save_pretrained"
            )
        return {"local": path}
    return {}


# Lens settings that change no result: how many probes share a forward pass (the records do
# not depend on it), how many heatmaps are drawn, and the records' file format (its name
# says it). The script reads the batch size from the config; leaving these out of the
# params keeps a change to them from re-running anything.
LENS_RUN_ONLY = ("batch_size", "heatmap_probes", "records_format")
EVERY_LENS_KEY = None  # every lens setting but LENS_RUN_ONLY

# The rules whose jobs load a model, each added by its own rules file (loads_model): the
# planner checks the model source of each of their jobs.
MODEL_RULES = set()


def loads_model(rule_name, lens_keys=()):
    """Registers ``rule_name`` as a rule whose jobs load a model, and returns its params
    for the lens settings its jobs read (``lens_keys``, or every setting but LENS_RUN_ONLY
    with EVERY_LENS_KEY): a setting re-runs exactly the rules that read it."""
    MODEL_RULES.add(rule_name)
    lens = config["lens"]
    if lens_keys is EVERY_LENS_KEY:
        return {k: v for k, v in lens.items() if k not in LENS_RUN_ONLY}
    return {k: lens[k] for k in lens_keys if k in lens}


def get_source_fingerprint(wildcards):
    """What identifies a prepared model's source beyond its config keys: the GGUF file's
    sha256, or the installed package's version (and its file's sha256). A param of
    prepare_model, so that a changed file or package re-prepares the model and re-runs
    what was made from it; computing it checks the source (a missing or unreadable file,
    an architecture that cannot be read), for every model of the plan."""
    entry = get_model(wildcards)
    key = wildcards.model
    if entry["source"] == "gguf" and os.path.isfile(os.path.expanduser(entry["path"])):
        # The header first, so that a damaged file's error names the key that points at it.
        _user_errors(check_gguf, os.path.expanduser(entry["path"]), key, f"models.{key}.path", CONFIGFILE)
    return _user_errors(source_fingerprint, key, entry, CONFIGFILE)




def check_plan_job(job):
    """What the planner (workflow/provenance/plan.py) checks of every job it considers: the model
    source of each model job, whether or not the job runs (a broken source is refused
    while planning, also when the prepared model is still there)."""
    if job.rule.name in MODEL_RULES and get_model(job.wildcards)["source"] in PREPARED_SOURCES:
        get_source_fingerprint(job.wildcards)


def lens_resource(name):
    """One of run_lens's resources (mem_mb, runtime, gpu), from the model's size and device.

    Evaluated again just before the job runs, when prepared weights exist."""

    def resource(wildcards, input):
        return _job_errors(lens_resources, get_model(wildcards), config, input.get("prepared"), wildcards.model)[name]

    return resource


# What every rule that loads a model asks the scheduler for (from the parameter count and
# dtype, workflow/model/resources.py; models.{model}.resources overrides) and reads of the config:
# written once, unpacked into run_lens, run_patching, run_generation and train_tuned_lens.
MODEL_RESOURCES = {name: lens_resource(name) for name in ("mem_mb", "runtime", "gpu")}


def job_estimate(rule, wildcards, prepared=None):
    """What ``rule``'s job on the model will cost (workflow/model/cost.py), or None."""
    from workflow.model.cost import estimate

    return _job_errors(estimate, rule, get_model(wildcards), config, PROBES, PAIRS, prepared, wildcards.model)


def expected_minutes(rule):
    """The job's ``expected_minutes`` resource: its estimate, in whole minutes (0: none, or
    under half a minute). A resource, not a param: an estimate changes no result; the job's
    log opens with it (workflow/provenance/logs.py)."""

    def resource(wildcards, input):
        found = job_estimate(rule, wildcards, input.get("prepared"))
        return round(found.minutes) if found is not None else 0

    return resource


def model_resources(rule):
    """What a job of ``rule`` (one that loads a model) asks a scheduler for, and its estimate."""
    return {**MODEL_RESOURCES, "expected_minutes": expected_minutes(rule)}


def long_job(job):
    """The dry run's line for a planned job expected to take long (workflow/model/cost.py), or None."""
    from workflow.model.cost import LONG_MINUTES

    if job.rule.name not in MODEL_RULES:
        return None
    found = job_estimate(job.rule.name, job.wildcards, job.input.get("prepared"))
    return None if found is None or found.minutes < LONG_MINUTES else f"{job.rule.name} {job.wildcards.model}: {found.said}"
MODEL_PARAMS = {"entry": get_model_settings, "device": config["device"], "dtype": config["dtype"], "backend": config["backend"]}


def prepare_resource(name):
    def resource(wildcards):
        return _job_errors(prepare_resources, get_model(wildcards), wildcards.model)[name]

    return resource


def checked_template(stage, template):
    """The stage's template, once its evaluator is known to be usable (key and model for an
    LLM provider): checked when the workflow is planned, before any job runs."""

    def template_input(wildcards):
        _user_errors(check_settings, stage_settings(config["evaluation"], stage), stage)
        return template

    return template_input


def model_outputs(results, records_pattern=None):
    """Input function: every model's JSON summary and records file under ``results``;
    ``records_pattern``: the records' path with {model}, if not output-{model}-records.csv."""

    def inputs(wildcards):
        models = experiment_rules(results.rsplit("/", 1)[-1]).models
        outputs = expand(f"{results}/output-{{model}}.json", model=models)
        records = expand(records_pattern or f"{results}/output-{{model}}-records.csv", model=models)
        return {"outputs": outputs, "records": records}

    return inputs


def template_path(experiment_id, stage):
    return f"prompts/{experiment_id}/{stage}-evaluation.md"


def evaluation_inputs(stage):
    """Input function of an evaluation rule: the experiment's outputs, the figures the
    evaluation links, the stage's template (checked as in checked_template) and the
    evaluations it builds on."""

    def inputs(wildcards):
        rules = experiment_rules(wildcards.exp)
        template = checked_template(stage, template_path(wildcards.exp, stage))(wildcards)
        if stage == "single-model":
            return {**rules.model_inputs(wildcards.model), "figures": rules.model_figures(wildcards.model),
                    "template": template}
        if not rules.models:
            stop(f"no model runs experiment {wildcards.exp}: add \"{wildcards.exp}\" to a model's experiments in {CONFIGFILE}")
        per_model = [rules.model_inputs(model) for model in rules.models]
        inputs = {key: [paths[key] for paths in per_model] for key in per_model[0]}
        results = f"results/{wildcards.exp}"
        if stage == "cross-model":
            inputs["evaluations"] = expand(f"{results}/evaluation-{{model}}.md", model=rules.models)
            inputs["figures"] = rules.cross_figures
        else:
            inputs["cross"] = f"{results}/evaluation-cross-model.md"
        return {**inputs, "template": template}

    return inputs


def model_input_names(wildcards):
    """The names of a model's inputs, in the order the evaluation script reads them."""
    rules = experiment_rules(wildcards.exp)
    return list(rules.model_inputs(rules.models[0] if rules.models else MODELS[0]))


def experiment_package(wildcards):
    """Experiment {exp}'s module as a file: code a generic evaluation script runs that no
    import in it names (code_version's ``also``, kept in the provenance record)."""
    from workflow.evaluation.experiment import module_file

    experiment_rules(wildcards.exp)  # a clear error for an experiment there is none of
    return [module_file(wildcards.exp)]


def evaluation_code(script):
    """The code version of a generic evaluation script run for one experiment: the script
    and the experiment's package."""
    return lambda wildcards: code_version(script, *experiment_package(wildcards))


def get_page_inputs(wildcards):
    """The evaluation and the figures it links (embedded into the page)."""
    name = wildcards.name
    rules = experiment_rules(wildcards.exp)
    if name in MODELS:
        check_runs(wildcards.exp, name)
        figures = rules.model_figures(name)
    elif name == "cross-model":
        figures = rules.cross_figures
    elif name == "meta":
        figures = []
    else:
        stop(
            f"no evaluation named {name!r}: pages exist for the models in {CONFIGFILE} "
            f"({', '.join(MODELS)}), 'cross-model' and 'meta'"
        )
    return {"evaluation": f"results/{wildcards.exp}/evaluation-{name}.md", "figures": figures}


def get_explorer_inputs(wildcards):
    """A model's JSON summary and records file of the experiment, as its evaluation reads them."""
    if wildcards.model not in MODELS:
        stop(f"no model {wildcards.model!r} in {CONFIGFILE}: its models are {', '.join(MODELS)}")
    check_runs(wildcards.exp, wildcards.model)
    inputs = experiment_rules(wildcards.exp).model_inputs(wildcards.model)
    return {"summary": inputs["summary"], "records": inputs["records"]}


# The report's first category: Snakemake's menu lists categories alphabetically, and a name
# that starts with punctuation sorts before every model key (letters and digits first).
START_CATEGORY = "» Start here"


def page_category(wildcards):
    return {"cross-model": "Cross-model", "meta": "Method"}.get(wildcards.name, wildcards.name)

"""The experiments the pipeline knows, and what each gives the generic evaluation chain.

An experiment is one package under ``workflow/`` (``workflow/exp001``, ...) with its run
code, records, facts, digest, offline analyst sections and figures; one rules file
(``rules/expNNN.smk``); its prompt templates (``prompts/NNN/``); its report captions and
one section of the config schema. The evaluation chain (per model, cross-model, meta,
HTML pages) is generic: it asks the package's ``EXPERIMENT`` for the facts of a model's
outputs, their digest and the offline analyst's sections. Registering an experiment is
one line in ``REGISTERED`` and one ``include:`` in the Snakefile.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workflow.errors import UserError

# Experiment id (the NNN of results/NNN) -> its package.
REGISTERED = {
    "001": "workflow.exp001",
}

STAGES = ("single-model", "cross-model", "meta")


def _no_variables(stage: str, facts: list[Any], summaries: list[dict[str, Any]]) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Experiment:
    """What the generic evaluation chain needs to know about one experiment."""

    id: str
    name: str  # what it studies, in a few words ("layers and logits")
    # The facts of one model's outputs, from the paths of its inputs by name (``summary``,
    # ``records`` and any others the experiment's rules give, such as another experiment's
    # outputs). Facts have a ``model`` attribute.
    model_facts: Callable[..., Any]
    # The digest of one model's facts in at most the given number of characters.
    digest: Callable[[Any, int], str]
    # The offline analyst: for each stage, the writer of each heading (casefolded).
    sections: Mapping[str, Mapping[str, Callable[[Any], str]]]
    # Template variables of a stage beyond the generic ones (model, metadata, digest(s),
    # evaluations, cross_evaluation), from the facts and the models' JSON summaries.
    variables: Callable[[str, list[Any], list[dict[str, Any]]], dict[str, str]] = _no_variables
    # Keys of a model's JSON summary left out of the single-model template's metadata.
    summary_details: tuple[str, ...] = field(default=("timings", "packages"))

    def title(self, stage: str, model: str | None = None) -> str:
        if stage == "single-model":
            return f"{model}: {self.name} (experiment {self.id})"
        if stage == "cross-model":
            return f"Cross-model comparison (experiment {self.id})"
        return f"Methodology critique (experiment {self.id})"


def experiment(experiment_id: str) -> Experiment:
    """The registered experiment ``experiment_id`` (its package is imported on demand)."""
    module = REGISTERED.get(str(experiment_id))
    if module is None:
        raise UserError(
            f"no experiment {experiment_id!r}: the registered experiments are {', '.join(sorted(REGISTERED))} "
            "(workflow/experiments.py)"
        )
    return importlib.import_module(module).EXPERIMENT

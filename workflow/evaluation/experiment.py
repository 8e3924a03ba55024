"""The experiments the pipeline knows, and what each gives the generic evaluation chain.

An experiment is one package under ``workflow/experiments/`` (``exp001``, ...) with its run
code, records, facts, digest, offline analyst sections and figures; one rules file
(``rules/expNNN.smk``); its prompt templates (``prompts/NNN/``); its report captions and
one section of the config schema. The evaluation chain (per model, cross-model, meta,
HTML pages) is generic: it asks ``EXPERIMENT`` in the package's ``experiment`` module
(``workflow/experiments/expNNN/experiment.py``) for the facts of a model's outputs, their digest and
the offline analyst's sections. Experiments are found by that name, so no list of them
is kept in code; registering one is its ``include:`` in the Snakefile.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.base.errors import UserError

PACKAGES = Path(__file__).resolve().parents[1] / "experiments"  # one expNNN/ per experiment


def module_file(experiment_id: str) -> str:
    """The experiment's ``experiment`` module, relative to the repository."""
    return f"workflow/experiments/exp{experiment_id}/experiment.py"


def registered() -> list[str]:
    """The ids of the experiments this code has (workflow/experiments/expNNN/experiment.py)."""
    return sorted(p.parent.name[3:] for p in PACKAGES.glob("exp*/experiment.py") if re.fullmatch(r"exp[0-9]{3}", p.parent.name))

STAGES = ("single-model", "cross-model", "meta")


def _no_variables(stage: str, facts: list[Any], summaries: list[dict[str, Any]]) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class ExplorerPage:
    """An experiment's interactive page (``workflow/report/explorer.py`` renders it)."""

    # The records file read as the experiment's plots read it: (records path, JSON path, the JSON).
    read: Callable[[str, str, dict[str, Any]], Any]
    # What the page shows: (the JSON, the records, the probes to show or None for all) -> the
    # page's data, whose ``kind`` tells explorer.js how to draw it.
    data: Callable[[dict[str, Any], Any, list[str] | None], dict[str, Any]]


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
    summary_details: tuple[str, ...] = ("packages",)
    # Its explorer page, if it has one.
    explorer: ExplorerPage | None = None

    def title(self, stage: str, model: str | None = None) -> str:
        if stage == "single-model":
            return f"{model}: {self.name} (experiment {self.id})"
        if stage == "cross-model":
            return f"Cross-model comparison (experiment {self.id})"
        return f"Methodology critique (experiment {self.id})"


def experiment(experiment_id: str) -> Experiment:
    """Experiment ``experiment_id``'s ``EXPERIMENT`` (its module is imported on demand)."""
    if str(experiment_id) not in registered():
        raise UserError(
            f"no experiment {experiment_id!r}: this code has {', '.join(registered())} "
            "(workflow/experiments/expNNN/experiment.py)"
        )
    return importlib.import_module(f"workflow.experiments.exp{experiment_id}.experiment").EXPERIMENT

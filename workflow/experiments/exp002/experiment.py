"""What the generic evaluation chain asks of experiment 002 (``EXPERIMENT``)."""

from __future__ import annotations

import json
from typing import Any

from workflow.evaluation.experiment import Experiment
from workflow.experiments.exp002 import analysis, digest, sections


def described_pairs(summary: dict[str, Any]) -> str:
    """The pairs of a model's JSON (002's, or 004's: the same pairs) as the meta template's ``${pairs}``."""
    pairs = [
        {k: p[k] for k in ("id", "clean_prompt", "clean_answer", "corrupted_prompt", "corrupted_answer")}
        for p in summary["pairs"]
    ]
    return json.dumps(pairs, indent=2, ensure_ascii=False)


def _variables(stage: str, facts: list[analysis.ModelFacts], summaries: list[dict[str, Any]]) -> dict[str, str]:
    if stage != "meta":
        return {}
    return {
        "patching_settings": json.dumps(summaries[0]["patching"], sort_keys=True),
        "pairs": described_pairs(summaries[0]),
    }


EXPERIMENT = Experiment(
    id="002",
    name="activation patching",
    model_facts=lambda summary, records, lens_summary=None: analysis.model_facts(summary, records, lens_summary),
    digest=digest.model_digest,
    sections={"single-model": sections.SINGLE, "cross-model": sections.CROSS, "meta": sections.META},
    variables=_variables,
    summary_details=("pairs", "timings", "packages", "identity_check"),
)

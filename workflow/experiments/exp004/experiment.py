"""What the generic evaluation chain asks of experiment 004 (``EXPERIMENT``)."""

from __future__ import annotations

import json
from typing import Any

from workflow.evaluation.experiment import Experiment
from workflow.experiments.exp002.experiment import described_pairs
from workflow.experiments.exp004 import analysis, digest, sections


def _variables(stage: str, facts: list[analysis.ModelFacts], summaries: list[dict[str, Any]]) -> dict[str, str]:
    if stage != "meta":
        return {}
    return {
        "component_settings": json.dumps(summaries[0]["components"], sort_keys=True),
        "pairs": described_pairs(summaries[0]),
    }


EXPERIMENT = Experiment(
    id="004",
    name="components",
    model_facts=lambda summary, records: analysis.model_facts(summary, records),
    digest=digest.model_digest,
    sections={"single-model": sections.SINGLE, "cross-model": sections.CROSS, "meta": sections.META},
    variables=_variables,
    summary_details=("pairs", "timings", "packages", "exactness_check"),
)

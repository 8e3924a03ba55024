"""What the generic evaluation chain asks of experiment 004 (``EXPERIMENT``)."""

from __future__ import annotations

import json
from typing import Any

from workflow.evaluation.experiment import Experiment, ExplorerPage
from workflow.experiments.exp004 import analysis, digest, sections
from workflow.experiments.exp004.explorer import components_page_data
from workflow.experiments.exp004.records import read_component_records
from workflow.lens.pairs import described_pairs


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
    summary_details=("pairs", "packages", "exactness_check"),
    explorer=ExplorerPage(read=lambda records, summary_path, summary: read_component_records(records, summary),
                          data=lambda summary, records, probes: components_page_data(summary, records)),
)

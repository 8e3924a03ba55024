"""What the generic evaluation chain asks of experiment 003 (``EXPERIMENT``)."""

from __future__ import annotations

import json
from typing import Any

from workflow.evaluation.experiment import Experiment, ExplorerPage
from workflow.experiments.exp003 import analysis, digest, sections
from workflow.lens.records import read_records
from workflow.report.explorer import lens_page_data


def _variables(stage: str, facts: list[analysis.ModelFacts], summaries: list[dict[str, Any]]) -> dict[str, str]:
    if stage != "meta":
        return {}
    return {"generation_settings": json.dumps(summaries[0]["generation"], sort_keys=True)}


EXPERIMENT = Experiment(
    id="003",
    name="generation",
    model_facts=lambda summary, records: analysis.model_facts(summary, records),
    digest=digest.model_digest,
    sections={"single-model": sections.SINGLE, "cross-model": sections.CROSS, "meta": sections.META},
    variables=_variables,
    summary_details=("probes", "packages", "identity_check"),
    explorer=ExplorerPage(read=lambda records, summary_path, summary: read_records(records),
                          data=lambda summary, records, probes: lens_page_data("003", summary, records, probes)),
)

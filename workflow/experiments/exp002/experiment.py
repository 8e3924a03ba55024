"""What the generic evaluation chain asks of experiment 002 (``EXPERIMENT``)."""

from __future__ import annotations

import json
from typing import Any

from workflow.evaluation.experiment import Experiment, ExplorerPage
from workflow.experiments.exp002 import analysis, digest, sections
from workflow.experiments.exp002.explorer import patching_page_data
from workflow.experiments.exp002.records import read_patching_records
from workflow.lens.pairs import described_pairs


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
    summary_details=("pairs", "packages", "identity_check"),
    explorer=ExplorerPage(read=lambda records, summary_path, summary: read_patching_records(records, summary),
                          data=lambda summary, records, probes: patching_page_data(summary, records)),
)

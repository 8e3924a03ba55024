"""What the generic evaluation chain asks of experiment 005 (``EXPERIMENT``)."""

from __future__ import annotations

import json
from typing import Any

from workflow.evaluation.experiment import Experiment, ExplorerPage
from workflow.experiments.exp005 import analysis, digest, sections
from workflow.experiments.exp005.explorer import words_page_data
from workflow.experiments.exp005.records import read_word_records


def _variables(stage: str, facts: list[analysis.ModelFacts], summaries: list[dict[str, Any]]) -> dict[str, str]:
    if stage != "meta":
        return {}
    return {"word_settings": json.dumps(summaries[0]["words"], sort_keys=True, ensure_ascii=False), "rule": digest.rule_text()}


EXPERIMENT = Experiment(
    id="005",
    name="words or concepts",
    model_facts=lambda summary, records: analysis.model_facts(summary, records),
    digest=digest.model_digest,
    sections={"single-model": sections.SINGLE, "cross-model": sections.CROSS, "meta": sections.META},
    variables=_variables,
    summary_details=("tasks", "packages", "identity_check"),
    explorer=ExplorerPage(read=lambda records, summary_path, summary: read_word_records(records, summary),
                          data=lambda summary, records, tasks: words_page_data(summary, records, tasks)),
)

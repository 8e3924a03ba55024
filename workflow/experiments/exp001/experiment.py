"""What the generic evaluation chain asks of experiment 001 (``EXPERIMENT``)."""

from __future__ import annotations

import json
from typing import Any

from workflow.evaluation.experiment import Experiment, ExplorerPage
from workflow.experiments.exp001 import analysis, digest, sections
from workflow.lens.records import load_checked
from workflow.report.explorer import lens_page_data


def _variables(stage: str, facts: list[analysis.ModelFacts], summaries: list[dict[str, Any]]) -> dict[str, str]:
    if stage != "meta":
        return {}
    every = summaries[0]["probes"]
    probes = [{k: p[k] for k in ("id", "prompt", "answer")} for p in every[: digest.DETAIL_PROBES]]
    shown = json.dumps(probes, indent=2, ensure_ascii=False)
    if len(every) > len(probes):
        relations = sorted({p["relation"] for p in every if p.get("relation")})
        shown += (f"\n(the first {len(probes)} of {len(every)} probes"
                  + (f"; relations {', '.join(relations)}" if relations else "") + ")")
    return {
        "lens_settings": json.dumps(facts[0].lens, sort_keys=True),
        "probes": shown,
    }


EXPERIMENT = Experiment(
    id="001",
    name="layers and logits",
    model_facts=lambda summary, records: analysis.model_facts(summary, records),
    digest=digest.model_digest,
    sections={"single-model": sections.SINGLE, "cross-model": sections.CROSS, "meta": sections.META},
    variables=_variables,
    # The probes and the identity check are in the digest (the identity check as orders of magnitude).
    summary_details=("probes", "packages", "identity_check"),
    explorer=ExplorerPage(read=lambda records, summary_path, summary: load_checked(records, summary_path),
                          data=lambda summary, records, probes: lens_page_data("001", summary, records, probes)),
)

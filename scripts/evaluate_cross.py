"""Rule evaluate_cross: the comparison of all models (of any experiment; workflow/evaluation/experiment.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.evaluation.run import evaluate, model_inputs  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402
from workflow.provenance.record import record_rule  # noqa: E402


def main(sm):
    made = evaluate(
        "cross-model",
        sm.wildcards.exp,
        model_inputs(sm.input, sm.params.model_inputs),
        sm.input.template,
        sm.params.evaluation,
        sm.output.evaluation,
        figures=list(sm.input.figures),
        evaluations=list(sm.input.evaluations),
    )
    record_rule(sm, "scripts/evaluate_cross.py", [sm.output.evaluation], made.provenance())


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

"""Rule evaluate_cross: the comparison of all models."""

from workflow.evaluation.run import evaluate_cross
from workflow.logs import run_script


def main(sm):
    evaluate_cross(
        list(sm.input.outputs),
        list(sm.input.records),
        list(sm.input.evaluations),
        sm.input.template,
        sm.params.evaluation,
        sm.output[0],
    )


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

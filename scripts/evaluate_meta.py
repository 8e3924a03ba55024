"""Rule evaluate_meta: the critique of the method, with next probes."""

from workflow.evaluation.run import evaluate_meta
from workflow.logs import run_script


def main(sm):
    evaluate_meta(
        list(sm.input.outputs), list(sm.input.records), sm.input.cross, sm.input.template, sm.params.evaluation, sm.output[0]
    )


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

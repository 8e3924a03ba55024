"""Rule evaluate_model: the evaluation of one model's outputs."""

from workflow.evaluation.run import evaluate_model
from workflow.logs import run_script


def main(sm):
    evaluate_model(sm.input.summary, sm.input.records, sm.input.template, sm.params.evaluation, sm.output[0])


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

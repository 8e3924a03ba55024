"""Rule prepare_model: dequantise a GGUF or packaged model once."""

from workflow.logs import run_script
from workflow.models import prepare_model


def main(sm):
    prepare_model(sm.wildcards.model, sm.params.entry, sm.output[0])


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

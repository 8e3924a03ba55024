"""Rule run_lens: decode every layer of one model on every probe."""

from workflow.experiment import write_lens_outputs
from workflow.logs import run_script


def main(sm):
    write_lens_outputs(
        model_key=sm.wildcards.model,
        entry=sm.params.entry,
        prepared_dir=sm.input.get("prepared"),
        device=sm.params.device,
        dtype=sm.params.dtype,
        lens=sm.params.lens,
        probes=sm.params.probes,
        summary_path=sm.output.summary,
        records_path=sm.output.records,
    )


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

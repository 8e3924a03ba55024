"""Rule run_generation: greedy generation after every probe of one model, the lens on each token (experiment 003)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp003.run import write_generation_outputs  # noqa: E402
from workflow.config.settings import LensSettings  # noqa: E402
from workflow.lens.job import Outputs  # noqa: E402
from workflow.model.load import ModelSpec  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402
from workflow.provenance.record import record_rule  # noqa: E402


def main(sm):
    document = write_generation_outputs(
        ModelSpec.of_job(sm),
        lens_settings=LensSettings.from_config(sm.params.lens),
        generation=sm.params.generation,
        probes=sm.params.probes,
        outputs=Outputs(sm.output.summary, sm.output.records),
        tuned_dir=sm.input.get("tuned"),
    )
    source = {k: document[k] for k in ("source", "source_sha256", "source_commit") if k in document}
    record_rule(sm, "scripts/run_generation.py", [sm.output.summary, sm.output.records], {"model_source": source})


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

"""Rule train_tuned_lens: fit one translator per layer on the shipped corpus; save the lens."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.model.load import ModelSpec  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402
from workflow.config.settings import LensSettings  # noqa: E402
from workflow.lens.tuned import TunedLensSettings  # noqa: E402
from workflow.lens.tuned_training import train_for_model  # noqa: E402


def main(sm):
    train_for_model(
        ModelSpec.of_job(sm),
        sm.output[0],
        settings=TunedLensSettings.from_config(sm.params.settings),
        lens_settings=LensSettings.from_config(sm.params.lens),
    )


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

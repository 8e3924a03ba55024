"""Rule plot_generation_cross: where generated tokens settle by word class, all models (experiment 003)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp003.analysis import model_facts  # noqa: E402
from workflow.experiments.exp003.plots import plot_settling  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402


def main(sm):
    plot_settling([model_facts(s, r) for s, r in zip(sm.input.outputs, sm.input.records)], sm.output[0])


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

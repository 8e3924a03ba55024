"""Rule plot_words_cross: the target word against the English word by relative depth, all models (experiment 005)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp005.analysis import model_facts  # noqa: E402
from workflow.experiments.exp005.plots import plot_cross  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402


def main(sm):
    plot_cross([model_facts(s, r) for s, r in zip(sm.input.outputs, sm.input.records)], sm.output[0])


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

"""Rule plot_cross: answer probability, rank, entropy and KL across relative depth, all models."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp001.analysis import model_facts  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402
from workflow.experiments.exp001.plots import plot_trajectories  # noqa: E402


def main(sm):
    facts = [model_facts(s, r) for s, r in zip(sm.input.outputs, sm.input.records)]
    plot_trajectories(facts, sm.output[0])


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

"""Rule plot_patching_cross: the last position's recovery by relative depth, all models (experiment 002)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp002.analysis import model_facts  # noqa: E402
from workflow.experiments.exp002.plots import plot_depth  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402


def main(sm):
    facts = [model_facts(s, r, lens) for s, r, lens in zip(sm.input.outputs, sm.input.records, sm.input.lens)]
    plot_depth(facts, sm.output[0])


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

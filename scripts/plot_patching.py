"""Rule plot_patching: one patching heatmap per pair of one model (experiment 002)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp002.analysis import model_facts  # noqa: E402
from workflow.experiments.exp002.plots import plot_pair, plot_pairs  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402


def main(sm):
    facts = model_facts(sm.input.summary, sm.input.records)
    plot_pairs(facts.model, {p.id: p for p in facts.pairs}, sm.input.summary, sm.params.pairs, sm.output.figures, plot_pair)


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

"""Rule plot_generation: one heatmap per probe of one model, generated tokens as columns (experiment 003)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp003.analysis import model_facts  # noqa: E402
from workflow.experiments.exp003.plots import plot_probe  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402


def main(sm):
    facts = model_facts(sm.input.summary, sm.input.records)
    probes = {p.id: p for p in facts.probes}
    for probe, path in zip(sm.params.probes, sm.output.figures):
        plot_probe(facts.model, facts.n_layers, probes[probe], path)


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

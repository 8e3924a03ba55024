"""Rule plot_heatmaps: one heatmap per probe and lens (logit, and tuned where run) of one model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.provenance.logs import run_script  # noqa: E402
from workflow.experiments.exp001.plots import heatmap_data, plot_heatmap  # noqa: E402
from workflow.lens.records import load_checked  # noqa: E402


def main(sm):
    records = load_checked(sm.input.records, sm.input.summary)
    for (probe, lens), path in zip(sm.params.figures, sm.output.heatmaps):
        plot_heatmap(heatmap_data(records, sm.wildcards.model, probe, lens=lens), path)


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

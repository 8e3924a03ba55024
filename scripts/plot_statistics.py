"""Rule plot_statistics: one model's probe-set statistics (accuracy and depth per relation, forward against reverse, reliability)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp001.analysis import model_facts  # noqa: E402
from workflow.experiments.exp001.plots import plot_statistics  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402


def main(sm):
    plot_statistics(model_facts(sm.input.summary, sm.input.records), sm.output[0])


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

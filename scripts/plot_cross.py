"""Rule plot_cross: the answer by layer through every lens, and answer probability, rank,
entropy and KL across relative depth, all models."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp001.analysis import model_facts  # noqa: E402
from workflow.experiments.exp001.plots import answer_by_layer, plot_answer_by_layer, plot_trajectories  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402
from workflow.lens.records import load_checked  # noqa: E402


def main(sm):
    pairs = list(zip(sm.input.outputs, sm.input.records))
    plot_answer_by_layer([answer_by_layer(json.loads(Path(s).read_text(encoding="utf-8")), load_checked(r, s)) for s, r in pairs],
                         sm.output.answer)
    plot_trajectories([model_facts(s, r) for s, r in pairs], sm.output.figure)


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

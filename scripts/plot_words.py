"""Rule plot_words: one figure per task of one model, a panel per lens (experiment 005)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp005.analysis import model_facts  # noqa: E402
from workflow.experiments.exp005.plots import plot_task  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402


def main(sm):
    facts = model_facts(sm.input.summary, sm.input.records)
    tasks = {t.id: t for t in facts.tasks}
    for task, path in zip(sm.params.tasks, sm.output.figures):
        plot_task(facts, tasks[task], path)


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

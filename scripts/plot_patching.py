"""Rule plot_patching: one patching heatmap per pair of one model (experiment 002)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.exp002.analysis import model_facts  # noqa: E402
import json  # noqa: E402

from workflow.exp002.plots import plot_pair, plot_skipped  # noqa: E402
from workflow.logs import run_script  # noqa: E402


def main(sm):
    facts = model_facts(sm.input.summary, sm.input.records)
    pairs = {p.id: p for p in facts.pairs}
    skipped = {s["id"]: s["reason"] for s in json.loads(open(sm.input.summary, encoding="utf-8").read()).get("skipped_pairs", [])}
    for pair, path in zip(sm.params.pairs, sm.output.figures):
        if pair in skipped:
            plot_skipped(facts.model, pair, skipped[pair], path)
        else:
            plot_pair(facts.model, pairs[pair], path)


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

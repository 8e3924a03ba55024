"""Rule evaluation_page: one evaluation as a self-contained HTML page (figures embedded)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.provenance.logs import run_script  # noqa: E402
from workflow.report.pages import write_page  # noqa: E402


def main(sm):
    # Only the figures the rule declares are embedded: the evaluation's text is an LLM's and the user's too.
    write_page(sm.input.evaluation, sm.output[0], title=f"Experiment {sm.wildcards.exp} · evaluation-{sm.wildcards.name}",
               figures=sm.input.figures)


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

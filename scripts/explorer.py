"""Rule explorer: one experiment's interactive page of one model's records (workflow/report/explorer.py)."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.report.explorer import write_explorer  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402


def main(sm):
    data = write_explorer(sm.wildcards.exp, sm.input.summary, sm.input.records, sm.output.page, sm.params.probes)
    items = {"lens": "probes", "words": "tasks"}.get(data["kind"], "pairs")  # what the page shows one at a time
    logging.getLogger("workflow").info("%s: %d %s, %d bytes", sm.output.page, len(data[items]), items, Path(sm.output.page).stat().st_size)


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

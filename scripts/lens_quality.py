"""Rule lens_quality: the tuned lens's held-out figures as a CSV and a plot, next to the logit lens's."""

import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.base.atomic import atomic_paths  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402
from workflow.report.plots import plot_lens_quality  # noqa: E402
from workflow.provenance.record import record_rule  # noqa: E402
from workflow.lens.records import rounded  # noqa: E402
from workflow.lens.tuned import CONFIG, QUALITY_COLUMNS, quality_rows  # noqa: E402


def main(sm):
    config = json.loads((Path(sm.input.lens) / CONFIG).read_text(encoding="utf-8"))
    rows = quality_rows(sm.wildcards.model, config)
    with atomic_paths(sm.output.csv) as (tmp,):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=QUALITY_COLUMNS)
            writer.writeheader()
            writer.writerows(rounded(rows))
    plot_lens_quality(sm.wildcards.model, rows, sm.output.plot)
    record_rule(sm, "scripts/lens_quality.py", None, {"tuned_lens": {k: config[k] for k in ("unembedding_sha256", "settings", "corpus")}})


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

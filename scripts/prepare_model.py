"""Rule prepare_model: dequantise a GGUF or packaged model once."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.provenance.logs import run_script  # noqa: E402
from workflow.gguf.prepare import prepare_model  # noqa: E402


def main(sm):
    prepare_model(sm.wildcards.model, sm.params.entry, sm.output[0])


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

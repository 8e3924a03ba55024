"""Rule run_lens: decode every layer of one model on every probe."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (the repository's own workflow/)

from workflow.experiments.exp001.run import write_lens_outputs  # noqa: E402
from workflow.config.settings import LensSettings, PatchscopeSettings  # noqa: E402
from workflow.lens.job import Outputs  # noqa: E402
from workflow.model.load import ModelSpec  # noqa: E402
from workflow.provenance.logs import run_script  # noqa: E402
from workflow.provenance.record import record_rule  # noqa: E402


def main(sm):
    document = write_lens_outputs(
        ModelSpec.of_job(sm),
        lens_settings=LensSettings.from_config(sm.params.lens),
        probes=sm.params.probes,
        outputs=Outputs(sm.output.summary, sm.output.records),
        tuned_dir=sm.input.get("tuned"),
        # Not a param: the records do not depend on it, so changing it re-runs nothing.
        batch_size=sm.config["lens"]["batch_size"],
        patchscope=PatchscopeSettings.from_config(sm.params.patchscope) if "patchscope" in sm.params.lenses else None,
    )
    source = {k: document[k] for k in ("source", "source_sha256", "source_commit") if k in document}
    record_rule(sm, "scripts/run_lens.py", [sm.output.summary, sm.output.records], {"model_source": source})


run_script(snakemake, main)  # noqa: F821 (provided by Snakemake)

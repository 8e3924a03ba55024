# Layer-by-layer interpretability pipeline. Experiments (one rules file each):
#   001 layers and logits (rules/exp001.smk)
#   002 activation patching (rules/exp002.smk)
#   003 generation: the lens on every generated token (rules/exp003.smk)
#   004 components: which attention, MLP and head writes the answer (rules/exp004.smk)
#   005 words or concepts: latent language through the logit, tuned and patchscope lenses (rules/exp005.smk)
#
#   snakemake --cores 1 results/001/evaluation-cross-model.md   # the whole chain up to the comparison
#   snakemake --cores 1 results/002/evaluation-cross-model.md   # the same for experiment 002
#   snakemake --cores 1 results/003/evaluation-cross-model.md   # the same for experiment 003
#   snakemake --cores 1 results/004/evaluation-cross-model.md   # the same for experiment 004
#   snakemake --cores 1 results/005/evaluation-cross-model.md   # the same for experiment 005
#   snakemake --cores 1                                         # everything, meta-evaluation included
#   snakemake -n                                                # what is stale, and why
#   snakemake --report report.html                              # one self-contained HTML file: plots, captions, evaluations
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# The repository's own library, whether or not it is pip-installed.
sys.path.insert(0, workflow.basedir)


# Measured before Snakemake reads it: Snakemake copies every aliased mapping once per use
# (workflow/base/limits.py).
from workflow.base.errors import UserError
from workflow.base.limits import check_yaml_file

try:
    check_yaml_file(os.path.join(workflow.basedir, "config", "config.yaml"), "config/config.yaml")
except UserError as e:
    sys.exit(f"Error: {e}")


configfile: "config/config.yaml"


# The description at the top of `snakemake --report report.html`.
report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/tuned_lens.smk"
# The experiments.
include: "rules/exp001.smk"
include: "rules/exp002.smk"
include: "rules/exp003.smk"
include: "rules/exp004.smk"
include: "rules/exp005.smk"
# The generic evaluation chain, for every experiment.
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True


# What is stale is decided by the committed provenance records, on any checkout (README,
# "Is this result current?"; workflow/provenance/plan.py): not by file times or .snakemake/.
from workflow.provenance.plan import install as plan_from_records

plan_from_records(workflow, check_plan_job, long_job)

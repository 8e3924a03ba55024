"""Library behind the layer-by-layer interpretability pipeline.

Everything the Snakemake rules do lives here as plain functions, so it can be
imported and unit-tested without Snakemake. ``scripts/`` only adapt the
``snakemake`` object to these functions.
"""

import os

__version__ = "0.1.0"

# Intel MKL (torch's CPU BLAS) splits a small matrix product differently between 1 and 2
# threads, so a 6-token prompt's residuals changed in their last bits with the thread
# count. In its strict reproducibility mode every product gives the same bits whatever
# the thread count, at no cost in speed that bench/lens_speed.py shows. Read by MKL at its first call, so set
# before torch computes anything; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

_API = ("Model", "load", "load_config", "describe_emergence", "plot_heatmap", "plot_answer_by_layer", "plot_patching",
        "explore")


def __getattr__(name: str):
    """The Python API's names (``workflow.api``), imported on first use: ``from workflow import load``."""
    if name in _API:
        # Imported by name, not by an import statement: no rule's script uses the API, so
        # its code is not part of any rule's code version (workflow/provenance/codeversion.py reads
        # import statements), and editing it re-runs nothing.
        import importlib

        return getattr(importlib.import_module("workflow.api"), name)
    raise AttributeError(f"module 'workflow' has no attribute {name!r}")

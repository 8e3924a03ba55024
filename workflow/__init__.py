"""Library behind the layer-by-layer interpretability pipeline.

Everything the Snakemake rules do lives here as plain functions, so it can be
imported and unit-tested without Snakemake. ``scripts/`` only adapt the
``snakemake`` object to these functions.
"""

__version__ = "0.1.0"

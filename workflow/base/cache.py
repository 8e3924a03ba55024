"""The per-user cache of things this code derives and may keep between runs (the fused
lens kernel's builds, the code versions' parsed modules, the CPU's matrix-product rate the
cost estimates use, the GGUF architectures transformers reads): ``$LAYERWISE_LENS_CACHE``,
else ``$XDG_CACHE_HOME/layerwise-lens``, else ``~/.cache/layerwise-lens``. Everything in it
is named by what it was made from (a measurement: by the processor and the build that made
it), so it is never stale and can be deleted at any time. Torch-free: planning reads it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("LAYERWISE_LENS_CACHE"):
        return Path(os.environ["LAYERWISE_LENS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "layerwise-lens"

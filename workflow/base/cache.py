"""The per-user cache of things this code derives and may keep between runs (the fused
lens kernel's builds, the code versions' parsed modules, the CPU's matrix-product rate the
cost estimates use, the GGUF architectures transformers reads): ``$LAYERWISE_LENS_CACHE``,
else ``$XDG_CACHE_HOME/layerwise-lens``, else ``~/.cache/layerwise-lens``. Everything in it
is named by what it was made from (a measurement: by the processor and the build that made
it), so it is never stale and can be deleted at any time. Torch-free: planning reads it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from workflow.base.atomic import write_text


def cache_dir() -> Path:
    if os.environ.get("LAYERWISE_LENS_CACHE"):
        return Path(os.environ["LAYERWISE_LENS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "layerwise-lens"


def keep(entry: Path, value: Any) -> None:
    """Write a cache entry (``value`` as JSON) whole or not at all; a cache that cannot be
    written is no error: what it would have kept is made again next time."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_text(entry, json.dumps(value))
    except OSError:
        pass

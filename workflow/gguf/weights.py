"""A model run from its quantised GGUF file, with no float32 copy (config key ``weights: quantised``).

The model is built without weights (parameters on the meta device, buffers such as the
rotary tables real). Each module's parameters are made from the file just before the
module runs and dropped when it returns: accelerate's ``AlignDevicesHook`` with a weights
map (``FileWeights``) that reads the module's tensors from the file and dequantises them
on access. So the weights in memory at any moment are those of one module (an attention
projection, one MLP matrix, one layer's fused experts), besides the unembedding, which
the lens applies at every layer and which is made once and kept (with the embedding
where they are tied). A batch passes through a module before the next module is read:
the file is read once per forward pass, whatever the batch size.

A parameter is made by the rule preparation uses (``workflow.gguf.arch``'s tables, or for
the architectures transformers reads tensor by tensor its own tensor processors,
``Processed``), so its values are the bits ``weights: dequantised`` would write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.hooks import ModelHook
from torch import nn

from workflow.base.errors import UserError
from workflow.gguf.arch import Experts, own_architecture, Plan, Take, tensor_reader, weight_plan
from workflow.gguf.file import read_header
from workflow.gguf.prepared import MANIFEST, PARSED_CONFIG
from workflow.gguf.stream import dequantisation_rate, dequantise, numpy_layout, tied_duplicates
from workflow.provenance.record import sha256_file

log = logging.getLogger(__name__)

# A module's weights exist this many times over while they are made: the float32 array
# dequantised from the file, a rule's reordered copy (experts concatenated and transposed),
# and the tensor in the model's dtype (bench/gguf_layers.py measures the peak).
MADE_COPIES = 3


@dataclass(frozen=True)
class Processed:
    """A transformers parameter made by transformers' own tensor processor for the
    architecture from the file tensors it is made of (one, or several experts merged)."""

    name: str
    names: tuple[str, ...]
    processor: Any = field(compare=False)
    mapping: dict[str, str] = field(compare=False)

    def sources(self) -> tuple[str, ...]:
        return self.names

    def make(self, read, config) -> np.ndarray:
        parsed: dict[str, Any] = {"tensors": {}}
        made = None
        for source in self.names:
            result = self.processor.process(weights=read(source), name=source, tensor_key_mapping=self.mapping,
                                            parsed_parameters=parsed)
            if self.mapping.get(result.name) == self.name:
                made = result.weights
        if made is None:
            made = parsed["tensors"][self.name]
        return made.numpy() if isinstance(made, torch.Tensor) else np.asarray(made)


def transformers_plan(header, meta_model, parsed_config: dict[str, Any], key: str = "?"):
    """The plan (``workflow.gguf.arch.Plan``) for an architecture transformers reads tensor by
    tensor: each parameter from the file tensors its name map gives, through its processor."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    processor = TENSOR_PROCESSORS.get(header.architecture, TensorProcessor)(config=parsed_config)
    mapping = get_gguf_hf_weights_map(meta_model, processor)
    wanted = [n for n in meta_model.state_dict() if n not in tied_duplicates(meta_model)]
    sources: dict[str, list[str]] = {}
    for tensor in header.table:
        if tensor.name in mapping:
            sources.setdefault(mapping[tensor.name], []).append(tensor.name)
    rules = {n: Processed(n, tuple(sources[n]), processor, mapping) for n in wanted if n in sources}
    missing = {n: "a tensor in the file" for n in wanted if n not in rules}
    if missing:
        raise UserError(
            f"model {key!r}: the GGUF file has no tensor for {len(missing)} of the model's weights "
            f"({', '.join(list(missing)[:5])}{', …' if len(missing) > 5 else ''}); the file is incomplete or its "
            "architecture is converted differently"
        )
    return Plan(rules, (), {})


class FileWeights(Mapping):
    """Parameter name -> its tensor, made from the GGUF file on every access (nothing kept).

    Counts what it reads (``reads``, ``bytes``, ``seconds``) for the log and the benchmark.
    """

    def __init__(self, path: Path, header, plan, config, dtype: torch.dtype):
        self.path, self.plan, self.config, self.dtype = Path(path), plan, config, dtype
        self._read = tensor_reader(self.path, header)
        self._entries = {t.name: t for t in header.table}
        self._lock = threading.Lock()
        self._rates: dict[int, float] = {}
        self.reads = 0
        self.bytes = 0
        self.seconds = 0.0

    def __getitem__(self, name: str) -> torch.Tensor:
        rule = self.plan.rules.get(name)
        if rule is None:
            raise KeyError(name)
        with self._lock:
            self.bytes += sum(self._file_bytes(s) for s in rule.sources())
        return self._timed(lambda: rule.make(self._read, self.config))

    def _slices(self, name: str, indices: list[int]) -> np.ndarray:
        """File tensor ``name``'s slices ``indices`` along its outermost dimension (an
        embedding's row, an expert's matrix: contiguous in the file), dequantised."""
        from gguf import GGMLQuantizationType

        entry = self._entries[name]
        dtype, shape = numpy_layout(entry)
        count = int(np.prod(shape[1:]))
        raw = np.empty((len(indices), *shape[1:]), dtype=dtype)
        with open(self.path, "rb") as fh:
            for i, index in enumerate(indices):
                fh.seek(entry.offset + index * count * dtype.itemsize)
                raw[i] = np.frombuffer(fh.read(count * dtype.itemsize), dtype=dtype).reshape(shape[1:])
        with self._lock:
            self.bytes += raw.nbytes
        return dequantise(raw, GGMLQuantizationType(entry.ggml_type))

    def _timed(self, make, contiguous: bool = True) -> torch.Tensor:
        """``make()`` as a tensor of the model's dtype, the time it took counted; with
        ``contiguous`` false a strided view (a transposed matrix) is kept as it is."""
        started = time.perf_counter()
        made = make()
        made = np.ascontiguousarray(made, dtype=np.float32) if contiguous else np.asarray(made, dtype=np.float32)
        tensor = torch.from_numpy(made).to(self.dtype)
        with self._lock:
            self.reads += 1
            self.seconds += time.perf_counter() - started
        return tensor

    def by_rows(self, name: str) -> bool:
        """Whether rows of parameter ``name`` can be read alone: its rule takes one
        two-dimensional tensor of the file."""

        rule = self.plan.rules.get(name)
        return (isinstance(rule, (Take, Processed)) and len(rule.sources()) == 1
                and len(self._entries[rule.sources()[0]].dims) == 2)

    def rows(self, name: str, ids: list[int]) -> torch.Tensor | None:
        """Rows ``ids`` of parameter ``name`` read alone; None where ``by_rows`` says no."""
        if not self.by_rows(name):
            return None
        return self._timed(lambda: self._slices(self.plan.rules[name].sources()[0], ids))

    def source_size(self, source: str) -> tuple[int, int]:
        """(GGML type, bytes in the file) of tensor ``source`` of the file."""
        return int(self._entries[source].ggml_type), self._file_bytes(source)

    def expert(self, name: str, index: int) -> torch.Tensor:
        """Expert ``index`` of the fused expert parameter ``name``, from its part of the file."""
        rule = self.plan.rules[name]
        return self._timed(lambda: rule.expert(lambda source, e: self._slices(source, [e])[0], index), contiguous=False)

    def rate(self, kind: int, sample_bytes: int = 8 * 2**20) -> float:
        """File bytes of GGML type ``kind`` dequantised per second here, measured (once) on
        up to ``sample_bytes`` of the first tensor of that type."""
        if kind not in self._rates:
            self._rates[kind] = dequantisation_rate(self.path, next(t for t in self._entries.values() if t.ggml_type == kind), sample_bytes)
        return self._rates[kind]

    def _file_bytes(self, name: str) -> int:
        dtype, shape = numpy_layout(self._entries[name])
        return int(np.prod(shape)) * dtype.itemsize

    def __iter__(self) -> Iterator[str]:
        return iter(self.plan.rules)

    def __len__(self) -> int:
        return len(self.plan.rules)

    def __contains__(self, name: object) -> bool:
        return name in self.plan.rules


class EmbeddingRows(ModelHook):
    """An input embedding that reads from the file only the rows of the tokens it embeds:
    the module runs with those rows as its weight and the token ids renumbered into them
    (a full-size weight of no memory stands in between calls, for code that asks for its
    device or shape)."""

    def __init__(self, weights: FileWeights, name: str, device: str):
        self.weights, self.name, self.device = weights, name, device

    def init_hook(self, module):
        self.placeholder = nn.Parameter(
            torch.zeros((), dtype=self.weights.dtype, device=self.device).expand(module.weight.shape), requires_grad=False,
        )
        module._parameters["weight"] = self.placeholder
        return module

    def pre_forward(self, module, input_ids, *args, **kwargs):
        used, inverse = torch.unique(input_ids, return_inverse=True)
        rows = self.weights.rows(self.name, used.tolist())
        module._parameters["weight"] = nn.Parameter(rows.to(self.device), requires_grad=False)
        # padding_idx changes only gradients, and names a row of the full table
        self.padding_idx, module.padding_idx = getattr(module, "padding_idx", None), None
        return (inverse.reshape(input_ids.shape).to(self.device), *args), kwargs

    def post_forward(self, module, output):
        module._parameters["weight"] = self.placeholder
        module.padding_idx = self.padding_idx
        return output


def llama4_experts_by_one(module: nn.Module, weights: FileWeights, prefix: str, device: str) -> None:
    """Llama 4's routed experts run one expert at a time, each read from its own part of the
    file, and only the experts some token is routed to. transformers' ``Llama4TextExperts``
    gets every expert's input stacked (a token not routed to an expert has a zero row
    there, whose output is zero) and multiplies all experts at once; here each expert's
    rows that are not zero go through that expert's matrices alone."""
    gate_up, down = f"{prefix}gate_up_proj", f"{prefix}down_proj"

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        stacked = hidden_states.view(module.num_experts, -1, module.hidden_size)
        out = torch.zeros_like(stacked)
        for expert in range(module.num_experts):
            rows = stacked[expert].ne(0).any(-1).nonzero().squeeze(-1)
            if rows.numel() == 0:
                continue
            gate, up = (stacked[expert, rows] @ weights.expert(gate_up, expert).to(device)).chunk(2, dim=-1)
            out[expert, rows] = (up * module.act_fn(gate)) @ weights.expert(down, expert).to(device)
        return out.view(-1, module.hidden_size)

    module.forward = forward


# Expert modules run one expert at a time from the file (their class name -> how).
EXPERTS_BY_ONE = {"Llama4TextExperts": llama4_experts_by_one}


@dataclass(frozen=True)
class FileModel:
    """A model whose weights are read from its GGUF file on use, and what that costs."""

    model: nn.Module
    weights: FileWeights
    resident_bytes: int  # the unembedding (and a tied embedding), kept
    largest_module_bytes: int  # the most one module makes at a time
    token_bytes: dict[int, float]  # file bytes read for one generated token, per GGML type

    def seconds_per_token(self) -> float:
        """What generating one token costs at least: the file bytes one forward pass reads
        (every module's weights; of the experts, those a token is routed to; one embedding
        row), dequantised at the rate measured on this machine for each of their types.
        The arithmetic comes on top."""
        return sum(size / self.weights.rate(kind) for kind, size in self.token_bytes.items())

    def token_cost(self, key: str, tokens: int) -> tuple[float, str]:
        """Seconds per generated token (``seconds_per_token``), and what generating ``tokens``
        tokens costs, said for a user."""
        seconds = self.seconds_per_token()
        return seconds, (
            f"model {key!r} reads its weights from its GGUF file at every generated token (weights: quantised): "
            f"{sum(self.token_bytes.values()) / 1e9:.2f} GB of the file per token, dequantised at the rate measured "
            f"here, so about {seconds:.1f} s per token and "
            f"{seconds * tokens / 60:.1f} min for {tokens} tokens"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "weights": "read from the GGUF file on use (weights: quantised)",
            "gguf_file": self.weights.path.name,  # the config names where it is
            "resident_bytes": self.resident_bytes,
            "largest_module_bytes": self.largest_module_bytes,
            "file_bytes_per_token": int(sum(self.token_bytes.values())),
        }


def file_weights(model: nn.Module) -> FileWeights | None:
    """What a model built by ``file_model`` reads its weights through (its counters), else None."""
    return getattr(model, "_file_weights", None)


def quantised_manifest(prepared_dir: Path) -> dict[str, Any] | None:
    """The manifest of a ``weights: quantised`` preparation, else None."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return manifest if manifest.get("preparation") == "quantised" else None


def _plan_for(header, meta_model, prepared_dir: Path, key: str):
    if own_architecture(header.architecture) is not None:
        return weight_plan(header, meta_model, key)
    parsed = json.loads((Path(prepared_dir) / PARSED_CONFIG).read_text(encoding="utf-8"))
    return transformers_plan(header, meta_model, parsed, key)


def check_plan(key: str, gguf_path: Path, prepared_dir: Path, config) -> None:
    """Refuse a file whose tensors do not make the model, while preparing (before any run)."""

    _plan_for(read_header(gguf_path), _empty_model(config, torch.float32), prepared_dir, key)


# A tensor of this many elements or more that a module's __init__ asks torch.zeros for is made
# uninitialised (``_unfilled_zeros``).
UNFILLED_ZEROS = 1 << 20


@contextlib.contextmanager
def _unfilled_zeros() -> Iterator[list[torch.Tensor]]:
    """torch.zeros of UNFILLED_ZEROS elements or more returning an uninitialised tensor while
    inside (the tensors listed). A parameter is made real and then moved to the meta device
    (accelerate's ``init_empty_weights``): Llama 4's experts ask torch.zeros for 5.4 GB per
    layer at Scout's width, and filling them took 1.4 s a layer, a minute of a 48-layer model's
    load, for values never read. A buffer among them is filled after (``_empty_model``)."""
    original = torch.zeros
    made: list[torch.Tensor] = []

    def zeros(*size, **kwargs):
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if "out" in kwargs or not all(isinstance(n, int) for n in shape) or math.prod(shape) < UNFILLED_ZEROS:
            return original(*size, **kwargs)
        made.append(torch.empty(*size, **kwargs))
        return made[-1]

    torch.zeros = zeros
    try:
        yield made
    finally:
        torch.zeros = original


def _fill_buffers(model: nn.Module, unfilled: list[torch.Tensor]) -> None:
    """Zeros in every buffer of ``model`` that holds memory of an ``unfilled`` tensor: a buffer
    made by torch.zeros holds zeros, as asked."""
    storages = {t.untyped_storage().data_ptr() for t in unfilled}
    for buffer in model.buffers():
        if buffer.device.type != "meta" and buffer.untyped_storage().data_ptr() in storages:
            buffer.zero_()


def _empty_model(config, dtype: torch.dtype, **kwargs) -> nn.Module:
    """The model with its parameters on the meta device and its buffers real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False), _unfilled_zeros() as unfilled:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    _fill_buffers(model, unfilled)
    model.tie_weights()  # tied inside the context, each got its own copy
    return model


def _tensor_bytes(tensors, dtype: torch.dtype) -> int:
    return sum(t.numel() for t in tensors) * torch.empty((), dtype=dtype).element_size()


def file_model(key: str, prepared_dir: Path, device: str, dtype: torch.dtype, budget: int | None = None,
               **kwargs) -> FileModel:
    """The model of a ``weights: quantised`` preparation, its weights read from the GGUF
    file module by module (``kwargs`` go to ``from_config``, e.g. the attention kernel).
    Refused before any weight is read where what it holds at once exceeds ``budget`` bytes:
    the unembedding, and MADE_COPIES times the largest module's weights."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module
    from accelerate.utils import PrefixedDataset, set_module_tensor_to_device
    from transformers import AutoConfig

    manifest = quantised_manifest(prepared_dir)
    path = Path(manifest["gguf_path"])
    # By content: another file of the same size (another quantisation of the same model)
    # must not run with this preparation's config and plan. Hashed once per version of the
    # file (the digest cache), which the plan or the API has done already.
    if not path.is_file() or path.stat().st_size != manifest["gguf_bytes"] or sha256_file(path) != manifest["gguf_sha256"]:
        raise UserError(
            f"model {key!r}: its weights are read from {str(path)!r} (weights: quantised), which "
            f"{'no longer exists' if not path.is_file() else 'has changed since it was prepared'}; "
            f"put the file back or prepare the model again (snakemake --forcerun prepare_model)"
        )
    config = AutoConfig.from_pretrained(prepared_dir)
    model = _empty_model(config, dtype, **kwargs).eval()
    header = read_header(path)
    plan = _plan_for(header, model, prepared_dir, key)
    weights = FileWeights(path, header, plan, config, dtype)

    head = model.get_output_embeddings()
    head_ids = {id(p) for p in head.parameters()}
    resident_bytes = _tensor_bytes([p for p in model.parameters() if id(p) in head_ids], dtype)
    hooked = [(name, module) for name, module in model.named_modules()
              if any(True for _ in module.parameters(recurse=False))
              and not any(id(p) in head_ids for p in module.parameters(recurse=False))]
    embedding = model.get_input_embeddings()
    by_rows = {name for name, module in hooked
               if module is embedding and weights.by_rows(f"{name}.weight")}
    by_expert = {name for name, module in hooked if type(module).__name__ in EXPERTS_BY_ONE
                 and all(isinstance(plan.rules.get(f"{name}.{p}"), Experts) for p, _ in module.named_parameters())}

    def held(name: str, module: nn.Module) -> int:
        own = list(module.parameters(recurse=False))
        return _tensor_bytes(own, dtype) // (module.num_experts if name in by_expert else 1)

    largest = max((held(n, m) for n, m in hooked if n not in by_rows), default=0)
    need = resident_bytes + MADE_COPIES * largest
    if budget is not None and need > budget:
        raise UserError(
            f"model {key!r}: reading its weights from {path.name} needs about {need / 1e9:.2f} GB at once (the "
            f"unembedding, {resident_bytes / 1e9:.2f} GB, kept, and the largest module, {largest / 1e9:.2f} GB, made "
            f"{MADE_COPIES} times over while it is dequantised) but the budget is {budget / 1e9:.2f} GB; raise "
            f"placement.max_memory for {device} or free memory"
        )

    # The unembedding, and whatever shares its tensors (a tied embedding), is made once.
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    names: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append((module, attr))
            names.setdefault(id(param), []).append(f"{module_name}.{attr}" if module_name else attr)
    for pid in head_ids:
        made = nn.Parameter(weights[next(n for n in names[pid] if n in plan.rules)].to(device), requires_grad=False)
        for module, attr in owners[pid]:
            module._parameters[attr] = made
    for module_name, module in hooked:
        if module_name in by_rows:
            add_hook_to_module(module, EmbeddingRows(weights, f"{module_name}.weight", device))
            continue
        if module_name in by_expert:
            EXPERTS_BY_ONE[type(module).__name__](module, weights, f"{module_name}.", device)
            continue
        add_hook_to_module(module, AlignDevicesHook(
            execution_device=device, offload=True, weights_map=PrefixedDataset(weights, f"{module_name}."),
        ))
    for name, buffer in model.named_buffers():
        if buffer.device != torch.device(device):
            set_module_tensor_to_device(model, name, device)
    # Where inputs go (its parameters are on the meta device until used), as accelerate
    # records it for a model it places.
    model.hf_device_map = {"": device}
    model._file_weights = weights
    token_bytes: dict[int, float] = {}
    routed = getattr(config, "num_experts_per_tok", 1)
    for module_name, module in hooked:
        if module_name in by_rows:
            continue
        share = routed / module.num_experts if module_name in by_expert else 1.0
        for attr, _ in module.named_parameters(recurse=False):
            for source in plan.rules[f"{module_name}.{attr}"].sources():
                kind, size = weights.source_size(source)
                token_bytes[kind] = token_bytes.get(kind, 0.0) + size * share
    log.info(
        "%s: weights read from %s on use (%d parameters by %s); %.1f MB resident, at most %.1f MB made at a time",
        key, path.name, len(plan.rules), "the project's table" if not isinstance(next(iter(plan.rules.values())), Processed)
        else "transformers' tensor processors", resident_bytes / 1e6, largest / 1e6,
    )
    return FileModel(model, weights, resident_bytes, largest, token_bytes)

"""What a model job will cost before it starts: its work counted from the config, at a rate
for the model's size, backend and weights (docs/large-models.md, "What a run will cost").

A dry run lists the jobs expected to take longer than ``LONG_MINUTES``, and a model job's
log opens with its own estimate (the job's ``expected_minutes`` resource: never a param, an
estimate changes no result). Estimates of the order of the cost, not predictions:

- work: tokens through the model in forward passes (a prompt taken as one token per 3.5
  characters, plus one), one-token decode steps (generation), and forward passes;
- arithmetic: 2 FLOP per active parameter per token (of a mixture of experts, the experts a
  token is routed to), plus the lens's full-vocabulary products at every layer, at the
  float32 matrix-product rate NumPy's BLAS reaches on this machine's CPU (measured once
  per machine, about 0.2 s, and kept in the per-user cache); llama.cpp's quantised kernels are taken to reach that rate too;
- ``weights: quantised``: every forward pass dequantises every weight from the file, every
  decode step the weights one token uses, at the rate measured on the file's commonest
  tensor type here.

Jobs on a GPU (device cuda or mps) are not estimated; llama.cpp with ``n_gpu_layers`` is
estimated by the lens's products alone (on the CPU, where the lens computes them).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.base.cache import cache_dir, keep
from workflow.gguf.file import read_header
from workflow.gguf.prepare import package_dir
from workflow.gguf.prepared import MANIFEST
from workflow.gguf.stream import dequantisation_rate as measured_rate, numpy_layout
from workflow.model.resources import directory_parameters, gguf_header

LONG_MINUTES = 10  # a dry run names the jobs expected to take longer
CHARACTERS_PER_TOKEN = 3.5


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model, read from its GGUF header or config.json."""

    layers: int
    width: int
    vocabulary: int
    heads: int
    parameters: int  # every weight
    active: int  # the weights one token's arithmetic uses (no embedding table, routed experts as used)
    file_bytes: int = 0  # GGUF files: the tensors' bytes
    token_bytes: int = 0  # of which one token reads (its routed experts only)
    gguf: str | None = None


@dataclass(frozen=True)
class Work:
    """A job's work: ``tokens`` through the model in ``passes`` forward passes, ``steps``
    one-token decode steps, and the lens read at every layer of ``lens_rows`` positions."""

    what: str
    tokens: int = 0
    passes: int = 0
    steps: int = 0
    lens_rows: int = 0


# Tokens of one line of experiment 005's prompts (``Français: "fleur" - Deutsch: "Blume"``).
WORD_LINE_TOKENS = 14


def prompt_tokens(text: str) -> int:
    return 1 + math.ceil(len(text) / CHARACTERS_PER_TOKEN)


def job_work(rule: str, config: dict[str, Any], probes: list[dict], pairs: list[dict], shape: Shape) -> Work | None:
    """What ``rule``'s job does for one model, counted from the config."""
    lenses = len(config.get("lenses", ["logit"]))
    layers = shape.layers + 1
    if rule == "run_lens":
        tokens = sum(prompt_tokens(p["prompt"]) for p in probes)
        # The patchscope lens runs the inspection prompt from every layer of every position on
        # (half the blocks on average).
        patchscope = ("patchscope" in config.get("lenses", []))
        inspection = prompt_tokens(config.get("patchscope", {}).get("prompt", "")) if patchscope else 0
        return Work(f"{len(probes)} probes", tokens + tokens * inspection * layers // 2, passes=math.ceil(len(probes) / 16),
                    lens_rows=lenses * layers * tokens)
    if rule == "train_tuned_lens":
        tuned = config.get("tuned_lens", {})
        tokens = int(tuned.get("train_sequences", 48)) * int(tuned.get("seq_len", 128)) + int(tuned.get("heldout_positions", 256))
        return Work(f"{tokens:,} tokens of training text", tokens, passes=int(tuned.get("train_sequences", 48)),
                    lens_rows=layers * int(tuned.get("heldout_positions", 256)))
    if rule == "run_generation":
        generation = config.get("generation", {})
        chosen = probes[: int(generation.get("max_probes", 9))]
        new = int(generation.get("max_new_tokens", 12))
        tokens = sum(prompt_tokens(p["prompt"]) for p in chosen)
        return Work(f"{len(chosen)} probes x {new} generated tokens", tokens, passes=len(chosen), steps=len(chosen) * new,
                    lens_rows=lenses * layers * len(chosen) * new)
    if rule == "run_words":
        words = config.get("words", {})
        prompts = len(words.get("tasks", [])) * int(words.get("max_words", 24))
        inspection = prompt_tokens(config.get("patchscope", {}).get("prompt", ""))
        # A prompt: its demonstration lines and its own (about WORD_LINE_TOKENS each); the
        # patchscope runs the inspection prompt from every layer on (half the blocks on average).
        tokens = prompts * ((int(words.get("demonstrations", 3)) + 1) * WORD_LINE_TOKENS + inspection * layers // 2)
        return Work(f"{prompts} prompts, {len(words.get('tasks', []))} tasks", tokens,
                    passes=math.ceil(prompts / 16) * (1 + layers), lens_rows=(lenses + 1) * layers * prompts)
    if rule == "run_patching":
        samples = int(config.get("patching", {}).get("trace", {}).get("samples", 4))
        runs = sum(layers * prompt_tokens(p["clean"]) * (2 + samples) for p in pairs)
        tokens = sum(layers * prompt_tokens(p["clean"]) ** 2 * (2 + samples) for p in pairs)
        return Work(f"{len(pairs)} pairs, {runs:,} patched runs", tokens, passes=math.ceil(runs / 64))
    if rule == "run_components":
        exact = bool(config.get("components", {}).get("exact", True))
        sites = sum(shape.layers * (2 + shape.heads) * prompt_tokens(p["clean"]) for p in pairs) if exact else 0
        tokens = sum((shape.layers * (2 + shape.heads) * prompt_tokens(p["clean"]) if exact else 0) * prompt_tokens(p["clean"])
                     + 3 * shape.layers * prompt_tokens(p["clean"]) for p in pairs)
        return Work(f"{len(pairs)} pairs, {sites:,} component runs", tokens, passes=math.ceil(sites / 32) + 3 * shape.layers)
    return None


@functools.cache
def cpu_flops() -> float:
    """float32 FLOP per second of a large matrix product on this machine's CPU (NumPy's BLAS:
    a dry run imports no torch), measured once per machine (about 0.2 s) and kept in the
    per-user cache under the processor, its cores and NumPy's build: every dry run and job
    would otherwise measure it again."""
    import numpy as np

    try:
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    except (TypeError, AttributeError):  # a NumPy before 1.26: show_config takes no mode
        blas = {}
    machine = json.dumps([platform.machine(), _processor(), os.cpu_count(), np.__version__, blas.get("name"), blas.get("version")])
    entry = cache_dir() / "cpu-flops" / f"{hashlib.sha256(machine.encode()).hexdigest()}.json"
    try:
        return float(json.loads(entry.read_text(encoding="utf-8"))["flops"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((512, 2048), dtype=np.float32), rng.standard_normal((2048, 2048), dtype=np.float32)
    a @ b  # the first call sets up the kernel
    started, repeats = time.perf_counter(), 4
    for _ in range(repeats):
        a @ b
    flops = repeats * 2 * 512 * 2048 * 2048 / max(time.perf_counter() - started, 1e-9)
    keep(entry, {"flops": flops, "machine": json.loads(machine)})
    return flops


def _processor() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@functools.cache
def dequantisation_rate(path: str) -> float:
    """File bytes per second dequantised here, of the GGUF's commonest tensor type (by bytes)."""
    header = read_header(path)
    by_type: dict[int, int] = {}
    for entry in header.table:
        by_type[entry.ggml_type] = by_type.get(entry.ggml_type, 0) + tensor_bytes(entry)
    kind = max(by_type, key=by_type.get)
    return measured_rate(path, next(t for t in header.table if t.ggml_type == kind))


def tensor_bytes(entry: Any) -> int:
    """A GGUF tensor's bytes in the file (as ``numpy_layout`` reads it)."""
    dtype, shape = numpy_layout(entry)
    return math.prod(shape) * dtype.itemsize


def gguf_shape(header: Any, path: str) -> Shape | None:
    """A GGUF model's shape from its header: its blocks, width, vocabulary and heads, and
    which tensors are routed experts (``*_exps``, of which a token uses ``expert_used_count``
    of ``expert_count``)."""
    meta = header.metadata  # the architecture's keys without their "{arch}." prefix
    try:
        layers, width = int(meta["block_count"]), int(meta["embedding_length"])
        heads = meta.get("attention.head_count", 1)
        heads = int(heads if isinstance(heads, int) else max(heads))  # a list: per layer
        used = int(meta.get("expert_used_count") or 1)
        experts = int(meta.get("expert_count") or 1)
    except (KeyError, TypeError, ValueError):
        return None
    embedding = next((t for t in header.table if t.name == "token_embd.weight"), None)
    vocabulary = embedding.dims[1] if embedding is not None and len(embedding.dims) > 1 else 0
    active = file_bytes = token_bytes = 0
    for entry in header.table:
        share = used / experts if "_exps" in entry.name else 1.0
        size = tensor_bytes(entry)
        file_bytes += size
        if entry.name == "token_embd.weight":
            continue  # a lookup, not arithmetic; the unembedding counts as the lens's
        active += int(entry.elements * share)
        token_bytes += int(size * share)
    return Shape(layers, width, vocabulary, heads, header.parameters, active, file_bytes, token_bytes, path)


def config_shape(folder: Path) -> Shape | None:
    """A transformers model's shape from its config.json and safetensors headers (dense: every
    weight taken as active)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = config.get("text_config") or config
    parameters = directory_parameters(folder)
    try:
        layers, width, vocabulary = int(text["num_hidden_layers"]), int(text["hidden_size"]), int(text["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    if not parameters:
        return None
    return Shape(layers, width, vocabulary, int(text.get("num_attention_heads", 1)), parameters,
                 max(parameters - vocabulary * width, 0))


def model_shape(entry: dict[str, Any], prepared_dir: str | None, key: str) -> Shape | None:
    header = gguf_header(entry, key)
    if header is not None:
        if entry["source"] == "gguf":
            path = Path(entry["path"]).expanduser()
        else:
            path = package_dir(entry["package"]) / entry["file"]
        return gguf_shape(header, str(path))
    recorded = Path(prepared_dir) / MANIFEST if prepared_dir else None
    manifest = json.loads(recorded.read_text(encoding="utf-8")) if recorded is not None and recorded.is_file() else {}
    if manifest.get("preparation") == "quantised" and Path(manifest["gguf_path"]).is_file():  # a package's assembled file
        return gguf_shape(read_header(manifest["gguf_path"]), manifest["gguf_path"])
    for folder in (prepared_dir, entry.get("path") if entry["source"] == "local" else None):
        if folder and (Path(folder).expanduser() / "config.json").is_file():
            return config_shape(Path(folder).expanduser())
    return None


@dataclass(frozen=True)
class Estimate:
    minutes: float
    said: str


# more than 6 parameters: the job's rule, model entry, key and prepared folder, and the config's parts
def estimate(rule: str, entry: dict[str, Any], config: dict[str, Any], probes: list[dict], pairs: list[dict],
             prepared_dir: str | None = None, key: str = "?") -> Estimate | None:
    """The estimate for ``rule``'s job on model ``key`` (None: not a model job, a GPU job, or
    a model whose shape cannot be read yet)."""
    device = entry.get("device", config.get("device", "auto"))
    backend = entry.get("backend", config.get("backend", "auto"))
    if rule == "run_components":
        backend = "hooks"  # experiment 004 reads components from the PyTorch model
    if device in ("cuda", "mps"):
        return None
    # llama.cpp on a GPU: its own passes are not counted, the lens's products on the CPU are.
    engine_on_gpu = backend == "llamacpp" and bool((entry.get("llamacpp") or {}).get("n_gpu_layers", 0))
    shape = model_shape(entry, prepared_dir, key)
    if shape is None:
        return None
    work = job_work(rule, config, probes, pairs, shape)
    if work is None:
        return None
    flops = cpu_flops()
    tokens = work.tokens
    if rule in ("run_patching", "run_components") and backend != "llamacpp":
        tokens //= 2  # PyTorch runs the blocks from the patched one on: half of them on average
    model = 0 if engine_on_gpu else 2 * shape.active * (tokens + work.steps)
    arithmetic = (model + 2 * shape.width * shape.vocabulary * work.lens_rows) / flops
    reading = 0.0
    from_file = entry.get("weights") == "quantised" and backend != "llamacpp" and shape.gguf
    if from_file:
        rate = dequantisation_rate(shape.gguf)
        reading = (work.passes * shape.file_bytes + work.steps * shape.token_bytes) / rate
    seconds = arithmetic + reading
    way = "llama.cpp" if backend == "llamacpp" else ("from the GGUF file (weights: quantised)" if from_file else "PyTorch")
    if engine_on_gpu:
        way += " (its passes on the GPU not counted: the lens's products on the CPU only)"
    said = (f"about {_duration(seconds)}: {work.what}, about {work.tokens + work.steps:,} tokens through "
            f"{shape.active / 1e9:.2f} B active parameters on {way}, at {flops / 1e9:.0f} GFLOP/s measured here")
    if from_file:
        said += f", {work.passes * shape.file_bytes / 1e9 + work.steps * shape.token_bytes / 1e9:,.0f} GB dequantised at {rate / 1e9:.2f} GB/s"
    return Estimate(seconds / 60, said)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"

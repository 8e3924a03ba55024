"""A GGUF model run by llama.cpp (through llama-cpp-python's low-level API), with the
residual stream read and written at every layer while it decodes.

llama.cpp names the tensors of its compute graph (src/llama-context.cpp ``graph_get_cb``):
each block's output is ``l_out-N``; the residual entering block 0 is whatever tensor the
architecture's graph builder made of the token embeddings (``embd``, Gemma's
``inp_scaled``, ...), found here by data flow, not by a table (``LlamaCppModel.layer_names``).
The scheduler's evaluation callback (``cb_eval``) is asked, node by node, whether a
tensor is wanted; a wanted one is computed, then handed over with ``ask=false``: copied out
(capture) or overwritten before anything downstream reads it (patching). The asking, about
every node, is answered in C where the project's kernels build (workflow/native/graph_filter.c),
so Python is entered only for the tensors wanted.

Layers are numbered as in workflow/model/backends.py: 0 the residual entering the first block,
k the residual after block k (``l_out-(k-1)``).

Traps, each handled here: a callback that returns False or raises makes llama.cpp skip the
rest of the graph split silently (``llama_decode`` still returns 0, the logits are wrong),
so the callback catches everything, always lets the computation go on, and the run raises
after the decode naming what went wrong (``LlamaCppRunError``); the ctypes callback must
stay referenced while the context lives; on Metal/CUDA a tensor's ``data`` is device
memory, so tensors are read and written only through ``ggml_backend_tensor_get/_set``; in
its last block llama.cpp keeps only the rows whose logits were asked for, so every
position's logits are asked for, or (``read_from``) those of the positions read alone, the
last and the answer's; a sequence is decoded as one micro-batch, so every tensor is seen
once, whole.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workflow.base.errors import UserError
from workflow.gguf.file import read_header
from workflow.model.components import NotDecomposable
from workflow.model.logit_steps import largest_stretch, logit_steps
from workflow.native.graph_filter import GraphFilter

log = logging.getLogger(__name__)

GGML_TYPE_F32 = 0
CACHE_TYPES = {"f32": GGML_TYPE_F32, "f16": 1}  # ggml_type
GGML_OP_NONE = 0
GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64


class GGMLTensor(ctypes.Structure):
    """``struct ggml_tensor`` (ggml/include/ggml.h of the llama.cpp that llama-cpp-python
    0.3.36 builds): the fields read here are ``type``, ``ne``, ``nb``, ``op``, ``src`` and
    ``name``; the rest are laid out so that those sit at their C offsets."""


GGMLTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]

# A tensor named inside block N: "attn_norm-3", "Qcur-3 (reshaped)", ... (graph_get_cb's
# "%s-%d", and ggml's suffixes for views).
IN_BLOCK = re.compile(r"-(\d+)(?: \(.*\))*$")


class LlamaCppRunError(RuntimeError):
    """Something went wrong inside llama.cpp's evaluation callback: the run's numbers are
    not to be used."""


def _library():
    """llama-cpp-python's bindings and its shared library (which also resolves ggml's
    symbols); a clear error where it is not installed."""
    try:
        import llama_cpp
    except ImportError as error:
        raise UserError(
            f"the llama.cpp backend needs llama-cpp-python, which cannot be imported ({error}); "
            "install it with `.venv/bin/pip install llama-cpp-python==0.3.36`"
        ) from None
    lib = llama_cpp.llama_cpp._lib
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_set.restype = None
    return llama_cpp, lib


# ggml's log levels; its info is loading chatter, kept at debug.
_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_log_callback = None  # referenced for as long as llama.cpp may call it
_errors: collections.deque[str] = collections.deque(maxlen=4)  # llama.cpp's latest errors, for messages


def _route_logs(llama_cpp) -> None:
    """llama.cpp's own messages to this module's logger (its loading chatter at debug),
    not printed to stderr."""
    global _log_callback
    if _log_callback is not None:
        return

    def forward(level, text, user_data):
        try:
            message = text.decode("utf-8", "replace").rstrip()
            if message:
                log.log(_LOG_LEVELS.get(level, logging.DEBUG), "llama.cpp: %s", message)
                if level == 4:
                    _errors.append(message)
        except Exception:  # a logging failure must not unwind through C
            pass

    _log_callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


@dataclass
class Run:
    """One decode's results: ``residuals[i]`` the residual stream at ``layers[i]``, every
    position [T, d] float32; ``logits`` llama.cpp's own at every position [T, V] float32
    (a run read from position p on: positions p.. alone)."""

    layers: list[int]
    residuals: np.ndarray  # [len(layers), T, d]
    logits: np.ndarray  # [T, V]

    def layer(self, layer: int) -> np.ndarray:
        return self.residuals[self.layers.index(layer)]


class _Pass:
    """What one decode reads and writes, by graph name, and what the callback saw."""

    # more than 6 parameters: the decode's size, what it reads and writes, and from which position
    def __init__(self, n_tokens: int, d_model: int, capture: dict[str, int], patches: dict[str, list[tuple[int, np.ndarray]]],
                 read_from: int = 0):
        self.n_tokens = n_tokens
        self.d_model = d_model
        self.capture = capture  # graph name -> row in the output
        self.patches = patches
        self.read_from = read_from  # the first position read (residuals and logits)
        self.wanted = set(capture) | set(patches)
        self.out = np.empty((len(capture), n_tokens - read_from, d_model), dtype=np.float32)
        self.seen: dict[str, int] = {}
        self.error: str | None = None


def repack_fits(path: Path) -> bool:
    """Whether llama.cpp's repacked copy of a file's weights fits beside everything else: the
    file takes at most half the machine's physical memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return path.stat().st_size <= memory / 2


class LlamaCppModel:
    """A GGUF file opened by llama.cpp: tokenising, and forward passes that capture the
    residual stream at chosen layers and patch it (``run``).

    ``n_gpu_layers``: blocks offloaded to a GPU where llama.cpp was built with one (Metal,
    CUDA); ``n_threads``: CPU threads (default: the cores this process may use). The
    context is made for the longest sequence asked so far (``n_ctx`` at least that).
    ``cache_type``: the key-value cache's type, ``f16`` (llama.cpp's default, which rounds
    keys and values to half precision) or ``f32``; ``flash_attention``: llama.cpp's fused
    attention, on, off or (None) as llama.cpp decides. llama.cpp's CPU flash attention
    rounds queries, keys and values to half precision whatever the cache type: float32
    attention needs ``cache_type="f32", flash_attention=False``.

    ``repack``: llama.cpp's CPU weight repacking (``use_extra_bufts``, its default): at load
    it copies quantised blocks into an interleaved layout its kernels multiply faster, in
    memory of its own, so the file's mapped pages no longer stand in for the weights and a
    file larger than the memory cannot load (measured: bench/scout_width.py). None (the
    default) repacks where the file takes at most half the machine's memory
    (``repack_fits``).

    ``observe=False``: llama.cpp as its own programs run it, with no evaluation callback, so
    that nothing is read or written between its nodes (runs capture no layer and patch
    none; the baseline of bench/llamacpp_backend.py).
    """

    # more than 6 parameters: llama.cpp's context settings, each by name with llama.cpp's default
    def __init__(self, path: str | os.PathLike[str], *, n_gpu_layers: int = 0, n_threads: int | None = None,
                 n_ctx: int = 0, cache_type: str = "f16", flash_attention: bool | None = None,
                 repack: bool | None = None, key: str | None = None, observe: bool = True):
        self.path = Path(path)
        self.key = key or self.path.name
        if not self.path.is_file():
            raise UserError(f"model {self.key!r}: GGUF file {str(self.path)!r} does not exist")
        if cache_type not in CACHE_TYPES:
            raise UserError(f"model {self.key!r}: cache type {cache_type!r} is not one of {', '.join(CACHE_TYPES)}")
        self.cache_type = cache_type
        self.flash_attention = flash_attention
        self.n_gpu_layers = n_gpu_layers
        self._llama, self._lib = _library()
        llama = self._llama
        _route_logs(llama)
        llama.llama_backend_init()
        params = llama.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.repack = repack_fits(self.path) if repack is None else bool(repack)
        params.use_extra_bufts = self.repack
        _errors.clear()
        self._model = llama.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            said = next((e for e in _errors if "error loading model" in e), _errors[0] if _errors else "no reason given")
            raise UserError(f"model {self.key!r}: llama.cpp cannot load {str(self.path)!r}: {said}; "
                            "run this model with another backend (backend: hooks or bridge)")
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.architecture = self._meta("general.architecture")
        # Blocks the forward pass runs: a multi-token-prediction block (counted in the file's
        # block_count, as transformers does not count it) is not one.
        self.n_layers = int(llama.llama_model_n_layer(self._model)) - int(llama.llama_model_n_layer_nextn(self._model))
        self.d_model = int(llama.llama_model_n_embd(self._model))
        self.vocab_size = int(llama.llama_vocab_n_tokens(self._vocab))
        self.n_threads = n_threads or len(os.sched_getaffinity(0))
        self._ctx = None
        self._n_ctx = 0
        self._min_ctx = n_ctx
        self._pass: _Pass | None = None
        self._nodes: list[tuple[str, int, tuple[int, ...], list[tuple[str, int, tuple[int, ...]]]]] | None = None
        # Kept referenced for as long as the context may call it. llama.cpp asks about every
        # graph node; the C filter answers that where it builds, entering Python only for
        # the tensors wanted.
        self._callback = llama.ggml_backend_sched_eval_callback(self._evaluate)
        self.observe = observe
        self._filter = GraphFilter.of(self._callback, llama.ggml_backend_sched_eval_callback, GGMLTensor.name.offset) if observe else None
        self.layer_names: list[str] = []
        try:
            if observe:
                self.layer_names = self._find_layer_names()
        except BaseException:
            self.close()
            raise

    def settings(self) -> dict[str, Any]:
        """What of llama.cpp's settings can change its numbers, as the JSON records them."""
        return {"n_gpu_layers": self.n_gpu_layers, "cache_type": self.cache_type,
                "flash_attention": self.flash_attention, "repack": self.repack}

    # ------------------------------------------------------------------ model facts
    def _meta(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(256)
        n = self._llama.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode() if n >= 0 else None

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text`` by llama.cpp's tokenizer; ``add_special`` adds what the
        model's vocabulary says a sequence starts (and ends) with, as the project's
        tokenising with ``add_special_tokens=True`` does. Special tokens written in the
        text are read as such (as transformers' tokenizers do)."""
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            tokens = (self._llama.llama_token * size)()
            n = self._llama.llama_tokenize(self._vocab, data, len(data), tokens, size, add_special, True)
            if n >= 0:
                return list(tokens[:n])
            size = -n

    def piece(self, token: int) -> str:
        """The text of one token (special tokens as their text)."""
        buffer = ctypes.create_string_buffer(256)
        n = self._llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, True)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, True)
        return buffer.raw[:n].decode("utf-8", "replace")

    # ------------------------------------------------------------------ context
    def _context(self, n_tokens: int):
        """A context holding ``n_tokens`` positions, decoding them as one micro-batch (each
        graph tensor then seen once, all positions at once)."""
        if self._ctx is not None and n_tokens <= self._n_ctx:
            return self._ctx
        llama = self._llama
        if self._ctx is not None:
            llama.llama_free(self._ctx)
            self._ctx = None
        size = max(self._min_ctx, 64)
        while size < n_tokens:
            size *= 2
        params = llama.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = size
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = self.n_threads
        if not self.observe:
            pass  # llama.cpp's own defaults: no callback
        elif self._filter is None:
            params.cb_eval, params.cb_eval_user_data = self._callback, None
        else:
            params.cb_eval, params.cb_eval_user_data = self._filter.callback, self._filter.user_data
        params.no_perf = True
        params.type_k = params.type_v = CACHE_TYPES[self.cache_type]
        params.flash_attn_type = {None: -1, False: 0, True: 1}[self.flash_attention]
        ctx = llama.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError(f"model {self.key!r}: llama.cpp could not make a context of {size} positions (see the log)")
        self._ctx, self._n_ctx = ctx, size
        return ctx

    def close(self) -> None:
        llama = self._llama
        if self._ctx is not None:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            llama.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_llama", None) is not None and getattr(self, "_model", None) is not None:
            self.close()

    # ------------------------------------------------------------------ the callback
    def _evaluate(self, pointer: int, ask: bool, user_data) -> bool:
        """llama.cpp's evaluation callback. Never raises and never stops the computation
        (either would skip the rest of the graph split silently): what goes wrong is kept
        in the pass and raised by ``run`` after the decode."""
        work = self._pass
        if work is None:
            return not ask
        try:
            tensor = ctypes.cast(pointer, ctypes.POINTER(GGMLTensor)).contents
            name = tensor.name.decode("utf-8", "replace")
            if self._nodes is not None and ask:
                self._nodes.append(_described(tensor, name))
                return False
            if ask:
                return work.error is None and name in work.wanted
            if work.error is None:
                self._handle(work, pointer, tensor, name)
        except BaseException as error:  # noqa: BLE001 (everything: nothing may unwind through C)
            if work.error is None:
                work.error = f"{type(error).__name__}: {error}"
        return True

    def _handle(self, work: _Pass, pointer: int, tensor: GGMLTensor, name: str) -> None:
        work.seen[name] = work.seen.get(name, 0) + 1
        if work.seen[name] > 1:
            work.error = f"graph tensor {name} was computed {work.seen[name]} times in one decode (a split batch?)"
            return
        shape = tuple(tensor.ne)
        d, t = self.d_model, work.n_tokens
        # Asked for the logits of positions read_from.. alone, llama.cpp keeps those rows alone
        # from where its last block selects them (graph input inp_out_ids).
        rows = t - work.read_from if work.read_from and shape[1] == t - work.read_from else t
        if tensor.type != GGML_TYPE_F32 or shape != (d, rows, 1, 1) or tensor.nb[0] != 4 or tensor.nb[1] != 4 * d:
            work.error = (f"graph tensor {name} is of ggml type {tensor.type}, shape {list(shape)}, strides "
                          f"{list(tensor.nb)}; expected contiguous float32 [{d}, {rows}] (width x positions)")
            return
        row_bytes = 4 * d
        first = t - rows  # the position of the tensor's first row
        for position, vector in work.patches.get(name, ()):
            if vector.shape != (d,):
                work.error = f"a patch of {name} at position {position} has shape {list(vector.shape)}; the residual stream there is [{d}]"
                return
            if not 0 <= position < t:
                work.error = f"a patch of {name} is at position {position}; the sequence has positions 0..{t - 1}"
                return
            if position < first:
                continue  # a row llama.cpp dropped: nothing read depends on it
            self._lib.ggml_backend_tensor_set(pointer, vector.ctypes.data, (position - first) * row_bytes, row_bytes)
        row = work.capture.get(name)
        if row is not None:
            self._lib.ggml_backend_tensor_get(pointer, work.out[row].ctypes.data, (work.read_from - first) * row_bytes,
                                              (t - work.read_from) * row_bytes)

    # ------------------------------------------------------------------ layer names
    def _find_layer_names(self) -> list[str]:
        """The graph names of layers 0..L: the residual entering block 0, then ``l_out-N``.

        Found from one decode's graph: the residual entering block 0 is the one tensor of
        the residual stream's shape [d, T] computed outside the blocks that a block-0 tensor
        reads (the token embeddings as the architecture scales them); an architecture whose
        graph names no ``l_out-N`` for every block, or where that tensor is not one, is
        refused."""
        probe = self.tokenize("The capital of")[:4] or [0]
        n_tokens = len(probe)
        self._nodes = []
        try:
            self._decode(probe, _Pass(n_tokens, self.d_model, {}, {}), logits=False)
            nodes = self._nodes
        finally:
            self._nodes = None
        names = {name for name, *_ in nodes}
        missing = [f"l_out-{i}" for i in range(self.n_layers) if f"l_out-{i}" not in names]
        if missing:
            raise UserError(
                f"model {self.key!r}: llama.cpp's graph for architecture {self.architecture!r} names no "
                f"{missing[0]}" + (f" (nor {len(missing) - 1} more l_out-N)" if len(missing) > 1 else "")
                + ", the output of each block that the llama.cpp backend reads; run this model with another "
                "backend (backend: hooks or bridge)"
            )
        # Graph order is topological: what is computed before block 0's first tensor is
        # outside the blocks; of that, block 0 reads the residual stream entering it.
        first = next(i for i, (name, *_) in enumerate(nodes) if _block(name) == 0)
        before = {name for name, op, shape, _ in nodes[:first] if shape == (self.d_model, n_tokens, 1, 1)}
        entering = sorted({source for name, _, _, sources in nodes[first:] if _block(name) == 0
                           for source, _, _ in sources if source in before})
        if len(entering) != 1 or not entering[0]:
            raise UserError(
                f"model {self.key!r}: in llama.cpp's graph for architecture {self.architecture!r} the residual "
                f"entering block 0 is not one named tensor (found {entering or 'none'}); run this model with "
                "another backend (backend: hooks or bridge)"
            )
        log.info("%s (%s): layer 0 is graph tensor %r, layer k is l_out-(k-1)", self.key, self.architecture, entering[0])
        return [entering[0]] + [f"l_out-{i}" for i in range(self.n_layers)]

    # ------------------------------------------------------------------ running
    # more than 6 parameters: what to read and write, and where in the cache the tokens go
    def run(self, tokens: Sequence[int], layers: Iterable[int] | None = None,
            patches: Iterable[tuple[int, int, object]] = (), start: int = 0, read_from: int = 0) -> Run:
        """Decode ``tokens`` from an empty cache: the residual stream at ``layers`` (default
        all, 0..L) at every position, and llama.cpp's logits at every position; with
        ``read_from`` (negative: from the end), at the positions from there on alone, and
        llama.cpp computes its last block's other rows and their logits not at all (-1, the
        last position alone: as it does when it generates).

        ``patches``: (layer, position, vector [d]) written into the residual stream at that
        layer before anything downstream reads it (several at one layer and position: the
        last wins); a captured layer is read after its patches. ``start``: the tokens go on
        from position ``start`` of the cache the previous runs filled (generation; the
        context must hold them: ``reserve``), positions in ``patches`` and the results
        counting from the first of ``tokens``."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("no tokens to run")
        layers = list(range(self.n_layers + 1)) if layers is None else [int(k) for k in layers]
        patches = list(patches)
        if not self.observe and (layers or patches):
            raise ValueError(f"model {self.key!r} was opened with observe=False: its runs read and write no layer")
        for layer in layers + [int(p[0]) for p in patches]:
            if not 0 <= layer <= self.n_layers:
                raise ValueError(f"layer {layer} is not one of 0..{self.n_layers}")
        writes: dict[str, list[tuple[int, np.ndarray]]] = {}
        for layer, position, vector in patches:
            value = np.ascontiguousarray(_as_numpy(vector), dtype=np.float32)
            writes.setdefault(self.layer_names[int(layer)], []).append((int(position), value))
        capture = {self.layer_names[k]: i for i, k in enumerate(layers)}
        if not -len(tokens) <= read_from < len(tokens):
            raise ValueError(f"read_from {read_from} is not a position of the {len(tokens)} tokens")
        work = _Pass(len(tokens), self.d_model, capture, writes, read_from % len(tokens))
        logits = self._decode(tokens, work, start=start)
        missing = [name for name in work.wanted if name not in work.seen]
        if work.error is None and missing:
            work.error = f"llama.cpp's graph computed no tensor {', '.join(sorted(missing))}"
        if work.error is not None:
            raise LlamaCppRunError(f"model {self.key!r}: the llama.cpp run of {len(tokens)} tokens failed in its "
                                   f"evaluation callback: {work.error}")
        return Run(layers, work.out, logits)

    def reserve(self, n_tokens: int) -> None:
        """A context of at least ``n_tokens`` positions now, so that runs continuing the
        cache (``run(start=...)``) up to that length never need a new one (which would
        lose the cache)."""
        self._context(n_tokens)

    def _decode(self, tokens: list[int], work: _Pass, logits: bool = True, start: int = 0) -> np.ndarray | None:
        """``tokens`` decoded with ``work`` in the callback, from an empty cache or (``start``)
        after the ``start`` positions it holds: the logits [T, V] (with ``logits``; an
        encoder's graph has none)."""
        llama = self._llama
        if self._pass is not None:
            raise RuntimeError(f"model {self.key!r}: a llama.cpp run is already under way on this model")
        if start and (self._ctx is None or start + len(tokens) > self._n_ctx):
            raise RuntimeError(f"model {self.key!r}: the context holds {self._n_ctx} positions, not {start + len(tokens)}: "
                               "reserve them before the first run")
        ctx = self._context(len(tokens))
        if not start:
            llama.llama_memory_clear(llama.llama_get_memory(ctx), True)
        n = len(tokens)
        batch = llama.llama_batch_init(n, 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                # The last block keeps only the rows whose logits are asked for.
                batch.logits[i] = 1 if i >= work.read_from else 0
            batch.n_tokens = n
            self._pass = work
            if self._filter is not None:
                self._filter.want(work.wanted, every=self._nodes is not None)
            try:
                status = llama.llama_decode(ctx, batch)
            finally:
                self._pass = None
                if self._filter is not None:
                    self._filter.want(())
        finally:
            llama.llama_batch_free(batch)
        if status != 0:
            raise RuntimeError(f"model {self.key!r}: llama_decode of {n} tokens returned {status}")
        if not logits:
            return None
        pointer = llama.llama_get_logits(ctx)
        return np.ctypeslib.as_array(pointer, shape=(n - work.read_from, self.vocab_size)).copy()


def _block(name: str) -> int | None:
    """The block a graph tensor was named in (None: outside the blocks, or unnamed by llama.cpp)."""
    match = IN_BLOCK.search(name)
    return int(match.group(1)) if match else None


def _described(tensor: GGMLTensor, name: str):
    sources = []
    for source in tensor.src:
        if source:
            s = source.contents
            sources.append((s.name.decode("utf-8", "replace"), s.op, tuple(s.ne)))
    return name, tensor.op, tuple(tensor.ne), sources


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().to("cpu").float().numpy()
    return np.asarray(value)


# How llama.cpp's CPU matrix product rounds its activations, by the weight's ggml type
# (ggml-cpu.c ``type_traits_cpu[...].vec_dot_type``): 8-bit blocks of 32 with a half-
# precision scale (Q8_0), of 256 with a float32 scale (Q8_K), or the activations converted
# to the weight's own float type.
_Q8_0 = ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "MXFP4")
_Q8_K = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
         "IQ4_XS", "TQ1_0", "TQ2_0")
_FLOAT_ROUNDING = {"F32": 0.0, "F16": 2.0**-11, "BF16": 2.0**-8}
# Float32 arithmetic around the rounding (the scales' products, the sums over blocks, the
# norm before the product), relative to sum |w x|: a few float32 epsilons per block of a
# row of thousands of elements stays far below it.
FLOAT_TERM = 1e-5


def matmul_rounding_bound(weight: np.ndarray, weight_type: str, x: np.ndarray) -> np.ndarray:
    """A bound on how far llama.cpp's CPU product ``weight @ x`` can be from the exact one,
    per output: [T, V] for ``weight`` [V, d] (dequantised, as gguf-py gives it) of ggml type
    ``weight_type`` (a name: "Q8_0", "Q6_K", "F32", ...) and activations ``x`` [T, d].

    Derivation. A quantised weight's dot product is computed on the weight's integers
    against the activations quantised in blocks (ggml-quants.c ``quantize_row_q8_0_ref``,
    ``quantize_row_q8_K_ref``): per block b of B elements (B = 32 for Q8_0, 256 for Q8_K),
    d_b = max_j |x_j| / 127 and q_j = round(x_j / d_b), so |x_j - q_j d_b| <= d_b / 2; Q8_0
    stores d_b in half precision, which moves each q_j d_b by at most |q_j| * 2^-11 d_b <=
    127 * 2^-11 d_b more. The integer sums are exact and the weight's dequantised values are
    exactly its scale times its integers, so the product differs from the exact one by
    sum_j w_j (x_j - x'_j), at most

        sum_b (1/2 + 127 * 2^-11) d_b sum_{j in b} |w_j|     (for Q8_K only 1/2 is needed)

    plus float32 rounding, bounded by FLOAT_TERM * sum_j |w_j x_j|. A float weight (F16,
    BF16) meets the activations converted to its type: |x_j - x'_j| <= u |x_j| (u = 2^-11,
    2^-8); an F32 weight leaves only the float32 term. Types whose activations carry a
    block sum as well (Q4_1, Q5_1: Q8_1) are refused (ValueError): not derived here.
    """
    x = np.asarray(x, dtype=np.float64)
    per_element = _rounding_per_element(weight_type, x)
    bound = np.empty((x.shape[0], weight.shape[0]))
    for start in range(0, weight.shape[0], 16384):  # a 262k vocabulary in float64 pieces
        rows = np.abs(weight[start : start + 16384].astype(np.float64))
        bound[:, start : start + 16384] = per_element @ rows.T + FLOAT_TERM * (np.abs(x) @ rows.T)
    return bound


class EngineCache:
    """Generation's cache on the llama.cpp backend: the positions llama.cpp's own key-value
    cache holds (the context's, filled by the runs that continue it)."""

    def __init__(self, length: int = 0):
        self.length = length


class EngineBlocks:
    """Activation patching on llama.cpp, as the PyTorch backends' ``BlockRunner`` does it:
    ``run`` gives what running the blocks from layer ``start`` on gives, by decoding the
    whole prompt with the starting residual and every patch written into the graph from the
    callback (each row of a batch one decode: llama.cpp runs one sequence at a time here)."""

    def __init__(self, engine: LlamaCppModel):
        self.engine = engine

    # more than 6 parameters: BlockRunner.run's, which experiment 002 calls on any backend
    def run(self, input_ids: list[int], hidden: torch.Tensor, start: int, patches: Any, keep: bool = False):
        """``hidden`` [B, T, d]: each row's residual at layer ``start`` (written at every
        position); ``patches``: the rows' writes at layers from ``start`` on. Returns the
        residual after the last block at the last position [B, d]; with ``keep``, every
        layer's from ``start`` on [L+1-start, B, T, d]."""
        n_layers = self.engine.n_layers
        layers = list(range(start, n_layers + 1)) if keep else [n_layers]
        out = []
        for row in range(hidden.shape[0]):
            writes = [(start, position, hidden[row, position]) for position in range(hidden.shape[1])]
            # Writes at the starting layer go after the starting residual (the last wins).
            writes += [(layer, position, value) for layer, position, value in patches.of_row(row)]
            run = self.engine.run(input_ids, layers=layers, patches=writes, read_from=0 if keep else -1)
            out.append(torch.from_numpy(run.residuals if keep else run.residuals[-1, -1]))
        return torch.stack(out, 1) if keep else torch.stack(out)


class LlamaCppBackend:
    """``backend: llamacpp``: every forward pass of a GGUF model run by llama.cpp on the
    file itself, the residual stream read from its graph at every layer; the lens's final
    norm and unembedding are the PyTorch model's, prepared from the same file (``head``,
    a backend over it: the same modules every other backend decodes with).

    llama.cpp rounds the activations entering a quantised product (``matmul_rounding_bound``),
    so the model's own logits differ from the lens's at the last layer by more than float32
    rounding: the identity check allows, logit by logit, that bound (``logit_bound``: computed
    in float32, never below it, for a block-quantised head at most 0.26% above) and nothing
    more. A probe of a batch runs alone (its own tokens, no padding): its numbers
    are its own whatever the batch.
    """

    name = "llamacpp"

    def __init__(self, engine: LlamaCppModel, head: Any, gguf_path: str | os.PathLike[str]):
        import gguf  # gguf-py: its tables, read when a backend is made

        self.engine = engine
        self.hf_model, self.final_norm, self.unembed = head.hf_model, head.final_norm, head.unembed
        self.n_layers, self.d_model, self.vocab_size = engine.n_layers, engine.d_model, head.vocab_size
        ours = (head.n_layers, head.d_model, head.vocab_size)
        if ours != (engine.n_layers, engine.d_model, engine.vocab_size):
            raise UserError(
                f"model {engine.key!r}: llama.cpp reads {engine.n_layers} blocks of width {engine.d_model} and a "
                f"vocabulary of {engine.vocab_size} from {str(gguf_path)!r}, the prepared model {ours[0]}, {ours[1]} and "
                f"{ours[2]}: run this model with another backend (backend: hooks or bridge)")
        self.stretch = largest_stretch(logit_steps(head.hf_model.config))
        self._bound: FastRoundingBound | None = None
        table = {entry.name: entry for entry in read_header(gguf_path).table}
        entry = table.get("output.weight") or table["token_embd.weight"]
        self.output_type = gguf.GGMLQuantizationType(entry.ggml_type).name
        try:
            matmul_rounding_bound(np.zeros((1, self.d_model), np.float32), self.output_type, np.zeros((1, self.d_model)))
        except ValueError as error:
            raise UserError(f"model {engine.key!r}: the lens cannot be checked against llama.cpp's logits: {error} "
                            f"(the file's unembedding is {self.output_type}); run this model with another backend "
                            "(backend: hooks or bridge)") from error

    def logit_bound(self, normed: torch.Tensor) -> torch.Tensor:
        """How far llama.cpp's logits may be from the exact product of the unembedding with
        ``normed`` [n, d] (the final norm's output), carried through the architecture's steps
        after the unembedding (Cohere's scale, Granite's divisor): [n, V]."""
        # The sums once per head: a head replaced is summed again (nothing here changes a
        # head's weights in place).
        if self._bound is None or self._bound.weight is not self.unembed.weight:
            self._bound = FastRoundingBound(self.unembed.weight, self.output_type)
        return self._bound(normed.detach().to("cpu", torch.float64).numpy()) * self.stretch

    def capture(self, input_ids, positions):
        run = self.engine.run(list(input_ids), read_from=-1 if positions == "last" else 0)
        keep = slice(-1, None) if positions == "last" else slice(None)
        return torch.from_numpy(run.residuals[:, keep]), torch.from_numpy(run.logits[-1:])

    def capture_batch(self, sequences, length, read, from_read=False):
        residuals = torch.zeros(self.n_layers + 1, len(sequences), length, self.d_model)
        logits = torch.empty(len(sequences), self.vocab_size)
        for b, ids in enumerate(sequences):
            first = read[b] if from_read else 0
            run = self.engine.run(list(ids), read_from=first)
            residuals[:, b, first : len(ids)] = torch.from_numpy(run.residuals)
            logits[b] = torch.from_numpy(run.logits[read[b] - first])
        return residuals, logits

    def new_cache(self, n_tokens: int) -> EngineCache:
        self.engine.reserve(n_tokens)
        return EngineCache()

    def step(self, tokens, cache: EngineCache):
        ids = [int(t) for t in tokens[0].tolist()]
        run = self.engine.run(ids, start=cache.length, read_from=-1)
        cache.length += len(ids)
        return torch.from_numpy(run.residuals[:, -1].copy()), torch.from_numpy(run.logits[-1].copy())

    @property
    def blocks(self) -> EngineBlocks:
        return EngineBlocks(self.engine)

    def components(self):
        raise NotDecomposable("llama.cpp's graph is not taken apart into components here: components are read with backend: hooks")


def _activation_block(weight_type: str) -> int | None:
    """The block llama.cpp quantises a product's activations in for a ``weight_type``
    weight (32 for Q8_0, 256 for Q8_K), None where they are converted to a float type."""
    return 32 if weight_type in _Q8_0 else 256 if weight_type in _Q8_K else None


def _block_scales(weight_type: str, x: np.ndarray) -> tuple[float, np.ndarray]:
    """(factor, d_b [T, d/B]): each activation of block b of ``x`` [T, d] (float64) moves by
    at most factor * d_b before its product with a block-quantising ``weight_type`` weight."""
    block = _activation_block(weight_type)
    factor = 0.5 + (127 * 2.0**-11 if block == 32 else 0.0)
    t, d = x.shape
    if d % block:
        raise ValueError(f"a width of {d} is not a whole number of {block}-element blocks")
    return factor, np.abs(x).reshape(t, d // block, block).max(-1) / 127


def _rounding_per_element(weight_type: str, x: np.ndarray) -> np.ndarray:
    """How far llama.cpp may move each activation of ``x`` [T, d] (float64) before its
    product with a ``weight_type`` weight: ``matmul_rounding_bound``'s derivation."""
    if _activation_block(weight_type):
        factor, scales = _block_scales(weight_type, x)
        per_element = np.repeat(factor * scales, _activation_block(weight_type), axis=1)
    elif weight_type in _FLOAT_ROUNDING:
        per_element = _FLOAT_ROUNDING[weight_type] * np.abs(x)
    else:
        raise ValueError(f"no rounding bound is derived for llama.cpp's products with {weight_type} weights")
    return per_element


class FastRoundingBound:
    """``matmul_rounding_bound`` of one weight, computed in float32 with torch and raised by
    what float32 may round it by: never below the float64 bound (tested).

    Weights whose products quantise the activations in blocks (Q8_0, Q8_K): each block's
    float32 term is taken through its largest activation (|x_j| <= 127 d_b), so the bound
    is sum_b (factor + 127 FLOAT_TERM) d_b S_vb, with S_vb = sum_{j in b} |w_vj| summed once
    in float64 and held in float32 (a 1/B-sized copy of the weight): each check is then a
    product of T x d/B x V, not a pass over the whole absolute weight, and lies at most
    127 FLOAT_TERM / factor (0.26%) above the float64 bound. Float weights (F32, F16, BF16):
    a pass over the absolute weights, a block of the vocabulary at a time (never all held
    at once), within 2 d 2^-24 above it."""

    PIECE = 4096  # vocabulary rows at a time: Scout's 5120 columns in float64 are 168 MB, held once

    def __init__(self, weight: torch.Tensor, weight_type: str):
        self.weight, self.weight_type = weight, weight_type
        self.block = _activation_block(weight_type)
        self.sums = None if self.block is None else self._block_sums()

    def _block_sums(self) -> torch.Tensor:
        vocab, width = self.weight.shape
        sums = torch.empty(vocab, width // self.block, dtype=torch.float32)
        for start in range(0, vocab, self.PIECE):
            rows = self.weight[start : start + self.PIECE].detach().to("cpu", torch.float64, copy=True).abs_()
            sums[start : start + self.PIECE] = rows.view(rows.shape[0], -1, self.block).sum(-1)
        return sums

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        """The bound for activations ``x`` [T, d]: [T, V], float64."""
        x = np.asarray(x, dtype=np.float64)
        if self.sums is None:
            return self._by_element(x)
        factor, scales = _block_scales(self.weight_type, x)
        left = torch.from_numpy((scales * (factor + 127 * FLOAT_TERM)).astype(np.float32))
        # Float32 rounds each of the d/B products and the sum over them, and both factors
        # once (the sums and the scales held in float32): raised by twice that.
        terms = self.sums.shape[1] + 3
        return (left @ self.sums.T).double() * (1 + 2 * terms * 2.0**-24)

    def _by_element(self, x: np.ndarray) -> torch.Tensor:
        # The bound in float32 is a sum of d non-negative products: float32 rounds it by at
        # most d units of 2^-24 relative (a sum's error bound), so it is raised by twice that.
        left = torch.from_numpy((_rounding_per_element(self.weight_type, x) + FLOAT_TERM * np.abs(x)).astype(np.float32))
        out = torch.empty(x.shape[0], self.weight.shape[0], dtype=torch.float32)
        for start in range(0, self.weight.shape[0], 16384):
            rows = self.weight[start : start + 16384].detach().to("cpu", torch.float32).abs()
            torch.mm(left, rows.T, out=out[:, start : start + 16384])
        return out.double() * (1 + 2 * x.shape[1] * 2.0**-24)

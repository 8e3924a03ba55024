"""GGUF dequantisation (``dequant.c`` beside this file): the types it handles, by GGML type
number, with each type's (values, bytes) per block. Same bits as gguf-py's numpy
dequantisers, many times faster (bench/gguf_layers.py); other types, or
LAYERWISE_LENS_KERNEL=torch, use gguf-py."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

from workflow.native import build as native_build
from workflow.native.build import built, parallel

SOURCE = Path(__file__).with_name("dequant.c")
TYPES = {8: (32, 34), 12: (256, 144), 13: (256, 176), 14: (256, 210)}
_P, _I = ctypes.c_void_p, ctypes.c_int64


def build(**options) -> Path:
    """This kernel built (``workflow.native.build.build``'s options: compiler, directory, march)."""
    return native_build.build(SOURCE, **options)


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    return built(SOURCE, "the GGUF dequantisation kernel", "gguf-py's, which gives the same values more slowly", load)


def load(path: Path) -> ctypes.CDLL:
    """A built dequantisation kernel, ready to call."""
    library = ctypes.CDLL(str(path))
    library.dequantise.argtypes = [ctypes.c_int, _P, _I, _I, _P]
    library.dequantise.restype = ctypes.c_int
    return library


def dequantise(raw, kind: int, library: ctypes.CDLL | None = None):
    """float32 values of the blocks in ``raw`` (a uint8 array, rows of whole blocks) of GGML
    type ``kind``, by the native kernel on PyTorch's number of threads; None where the
    kernel does not handle the type or is not available."""
    import numpy as np

    library = library or _library()
    if kind not in TYPES or library is None:
        return None
    values, size = TYPES[kind]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8)
    count = blocks.size // size
    out = np.empty((*blocks.shape[:-1], blocks.shape[-1] // size * values), dtype=np.float32)
    parallel(lambda begin, end: library.dequantise(kind, blocks.ctypes.data, begin, end, out.ctypes.data), (), (),
              0, count)
    return out

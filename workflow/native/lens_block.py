"""The fused CPU kernel of the streamed lens (``lens_block.c`` beside this file), built on
first use (``workflow.native.build``).

On a CPU, after the matrix product of a vocabulary block, the torch path makes about seven
passes over the block's logits (maximum, comparison with the answer, shift, clamp, exp,
two sums); the kernel makes one. ``LAYERWISE_LENS_KERNEL`` chooses (``auto``: the kernel
where it builds and PyTorch uses at most MAX_THREADS threads). The records say which ran
(``lens_kernel``).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from workflow.native import build as native_build
from workflow.native.build import ENV, UNAVAILABLE, built, mode, parallel  # noqa: F401 (ENV: the switch, by this name)

SOURCE = Path(__file__).with_name("lens_block.c")

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
ARGTYPES = [_P, _I, _I, _I, _I, _P, _I, _F, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I]


def build(**options) -> Path:
    """This kernel built (``workflow.native.build.build``'s options: compiler, directory, march)."""
    return native_build.build(SOURCE, **options)


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    return built(SOURCE, "the fused lens kernel", "the torch path, which gives the same records more slowly", load)


def load(path: Path) -> ctypes.CDLL:
    """A built kernel, ready to call."""
    library = ctypes.CDLL(str(path))
    library.lens_block.argtypes = ARGTYPES
    library.lens_block.restype = None
    return library


def available() -> bool:
    return _library() is not None


# The kernel is faster than the torch path up to 8 threads and slower beyond, where its
# threads, started from Python, compete with PyTorch's OpenMP workers still spinning after
# each block's matrix product (bench/lens_device.py; bench/README.md, "Why the code is
# shaped as it is").
MAX_THREADS = 8


def preferred() -> bool:
    """Whether the lens should use the kernel: ``native`` always, ``torch`` never, ``auto``
    where it builds and PyTorch runs on at most MAX_THREADS threads."""
    if mode() == "auto" and torch.get_num_threads() > MAX_THREADS:
        return False
    return available()


def build_error() -> str | None:
    """Why the kernel cannot be built here, or None where it can."""
    try:
        build()
    except UNAVAILABLE as error:
        return str(error)
    return None


# more than 6 parameters: the C kernel's arguments, as its signature in lens_block.c has them
def lens_block(
    z: torch.Tensor,
    answer: torch.Tensor,
    rebase_above: float,
    n_pos: int,
    state: dict[str, torch.Tensor],
    e_out: torch.Tensor,
    library: ctypes.CDLL | None = None,
) -> None:
    """Update the per-row accumulators in ``state`` with one block of raw logits ``z``.

    z: float32 [rows, width], contiguous rows, the final rows last (``e_out.shape[0]`` of
    them, row r's final row being the one of position r % n_pos); answer: float32
    [rows that have one]; state: float64 shift, S, Q, cross, delta and final_prev, int64
    count, float32 block_max, each [rows] (final_prev [final rows]); e_out: float32
    [final rows, width], filled with the final rows' e. See lens_block.c. ``library``: a
    kernel from ``load`` (default: this processor's build).
    """
    library = library or _library()
    assert library is not None, "lens_block called without the kernel"
    rows, width = z.shape
    assert z.dtype == torch.float32 and z.stride(1) == 1 and not z.is_cuda
    final_start = rows - e_out.shape[0]
    pointers = [state[name].data_ptr() for name in ("shift", "S", "Q", "cross", "count", "block_max", "delta")]
    head = (z.data_ptr(),)
    tail = (width, z.stride(0), answer.data_ptr(), answer.numel(), rebase_above, *pointers,
            e_out.data_ptr(), state["final_prev"].data_ptr(), final_start, n_pos)
    # The final rows first: the others read their e.
    parallel(library.lens_block, head, tail, final_start, rows)
    parallel(library.lens_block, head, tail, 0, final_start)


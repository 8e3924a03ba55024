"""The fused CPU kernel of the streamed lens (``native/lens_block.c``), built on first use.

On a CPU, after the matrix product of a vocabulary block, the torch path makes about seven
passes over the block's logits (maximum, comparison with the answer, shift, clamp, exp,
two sums); the kernel makes one. It is plain C, compiled with the system's C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``) for this processor (``-march=native``) into
a per-user cache (``$LAYERWISE_LENS_CACHE``, else ``$XDG_CACHE_HOME/layerwise-lens``,
else ``~/.cache/layerwise-lens``), under a name made from the source, the flags, the
compiler and the processor, so nodes of a cluster sharing a home directory each get
their own build. It is called through ctypes, which releases the GIL, on the rows split
between PyTorch's number of threads.

``LAYERWISE_LENS_KERNEL`` chooses: ``auto`` (default: the kernel where it builds and
PyTorch uses at most MAX_THREADS threads, else the torch path, with one warning where it
cannot build), ``native`` (the kernel or an error) or ``torch`` (never the kernel). The
records say which ran (``lens_kernel``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from workflow.cache import cache_dir
from workflow.errors import UserError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "native" / "lens_block.c"
# -ffp-contract=off: no product is fused into a sum unless the source says so, so that the
# kernel gives the same bits whatever instruction set it is built for (see lens_block.c).
FLAGS = ("-O3", "-fopenmp-simd", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
MARCH = "native"
MODES = ("auto", "native", "torch")
ENV = "LAYERWISE_LENS_KERNEL"

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
ARGTYPES = [_P, _I, _I, _I, _I, _P, _I, _F, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I]


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise UserError(f"environment variable {ENV}={value!r} is not one of {', '.join(MODES)}; unset it or pick one")
    return value


def _compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)  # type: ignore[return-value]
    raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")


def _processor() -> str:
    """What -march=native depends on: the machine and its instruction-set flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return platform.machine() + " " + " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.machine() + " " + platform.processor()


def build(compiler: str | None = None, directory: Path | None = None, march: str = MARCH, source: Path | None = None) -> Path:
    """Compile ``source`` (default the lens kernel) unless a build of it for this compiler
    and processor exists.

    ``march``: the instruction set to build for (``-march=``); tests build others than this
    processor's to check that every build gives the same bits.
    """
    compiler = compiler or _compiler()
    source = source or SOURCE
    flags = (*FLAGS, f"-march={march}")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        b"\0".join([source.read_bytes(), " ".join(flags).encode(), version.encode(), _processor().encode()])
    ).hexdigest()[:16]
    directory = directory or cache_dir()
    target = directory / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # Built beside the target and moved into place: concurrent jobs never load a partial file.
    handle, partial = tempfile.mkstemp(dir=directory, prefix=f".{source.stem}-", suffix=".so")
    os.close(handle)
    try:
        result = subprocess.run([compiler, *flags, "-o", partial, str(source)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(compiler).name} failed on {source.name}: {result.stderr.strip()[-500:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    log.info("built %s: %s", source.name, target)
    return target


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    chosen = mode()
    if chosen == "torch":
        return None
    try:
        return load(build())
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        if chosen == "native":
            raise UserError(f"{ENV}=native, but the fused lens kernel cannot be built or loaded: {error}") from error
        log.warning("fused lens kernel unavailable (%s); using the torch path, which gives the same records more slowly", error)
        return None


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
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        return str(error)
    return None


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="lens-kernel")


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
    _parallel(library.lens_block, head, tail, final_start, rows)
    _parallel(library.lens_block, head, tail, 0, final_start)


def _parallel(kernel, head: tuple, tail: tuple, begin: int, end: int) -> None:
    chunks = max(1, min(torch.get_num_threads(), (end - begin) // 64))
    if chunks == 1:
        kernel(*head, begin, end, *tail)
        return
    bounds = [begin + (end - begin) * i // chunks for i in range(chunks + 1)]
    # ctypes releases the GIL during the call, so the chunks run in parallel.
    futures = [_pool().submit(kernel, *head, bounds[i], bounds[i + 1], *tail) for i in range(chunks)]
    for future in futures:
        future.result()


# GGUF dequantisation (native/dequant.c): the types it handles, by GGML type number, with
# each type's (values, bytes) per block. Same bits as gguf-py's numpy dequantisers, many
# times faster (bench/gguf_layers.py); other types, or LAYERWISE_LENS_KERNEL=torch, use gguf-py.
DEQUANT_SOURCE = Path(__file__).resolve().parent / "native" / "dequant.c"
DEQUANT_TYPES = {8: (32, 34), 12: (256, 144), 13: (256, 176), 14: (256, 210)}


@functools.lru_cache(maxsize=1)
def _dequant_library() -> ctypes.CDLL | None:
    if mode() == "torch":
        return None
    try:
        return load_dequant(build(source=DEQUANT_SOURCE))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        if mode() == "native":
            raise UserError(f"{ENV}=native, but the GGUF dequantisation kernel cannot be built or loaded: {error}") from error
        log.warning("GGUF dequantisation kernel unavailable (%s); using gguf-py's, which gives the same values more slowly", error)
        return None


def load_dequant(path: Path) -> ctypes.CDLL:
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

    library = library or _dequant_library()
    if kind not in DEQUANT_TYPES or library is None:
        return None
    values, size = DEQUANT_TYPES[kind]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8)
    count = blocks.size // size
    out = np.empty((*blocks.shape[:-1], blocks.shape[-1] // size * values), dtype=np.float32)
    _parallel(lambda begin, end: library.dequantise(kind, blocks.ctypes.data, begin, end, out.ctypes.data), (), (),
              0, count)
    return out

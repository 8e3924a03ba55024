"""Building a C kernel of this package once per source, compiler and processor, and running
it on PyTorch's threads.

Each kernel is plain C, compiled with the system's C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang``) for this processor (``-march=native``) into a per-user cache
(``$LAYERWISE_LENS_CACHE``, else ``$XDG_CACHE_HOME/layerwise-lens``, else
``~/.cache/layerwise-lens``), under a name made from the source, the flags, the compiler
and the processor, so nodes of a cluster sharing a home directory each get their own build.
It is called through ctypes, which releases the GIL, on rows split between PyTorch's number
of threads.

``LAYERWISE_LENS_KERNEL`` chooses for every kernel: ``auto`` (default: the kernel where it
builds, else the Python path, with one warning), ``native`` (the kernel or an error) or
``torch`` (never a kernel).
"""

from __future__ import annotations

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

from workflow.base.cache import cache_dir
from workflow.base.errors import UserError

log = logging.getLogger(__name__)

# -ffp-contract=off: no product is fused into a sum unless the source says so, so that the
# kernel gives the same bits whatever instruction set it is built for (see lens_block.c).
FLAGS = ("-O3", "-fopenmp-simd", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
MARCH = "native"
MODES = ("auto", "native", "torch")
ENV = "LAYERWISE_LENS_KERNEL"

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


def build(source: Path, compiler: str | None = None, directory: Path | None = None, march: str = MARCH) -> Path:
    """Compile ``source`` unless a build of it for this compiler and processor exists.

    ``march``: the instruction set to build for (``-march=``); tests build others than this
    processor's to check that every build gives the same bits.
    """
    compiler = compiler or _compiler()
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


# Errors of a build or a load that mean "no kernel here", not a bug.
UNAVAILABLE = (OSError, RuntimeError, subprocess.SubprocessError)


def built(source: Path, what: str, fallback: str, load) -> object | None:
    """``load(build(source))``, or None where the kernels are off (``torch``) or this one
    cannot be built or loaded (an error naming ``what`` under ``native``; else one warning
    saying that ``fallback`` is used instead)."""
    chosen = mode()
    if chosen == "torch":
        return None
    try:
        return load(build(source))
    except UNAVAILABLE as error:
        if chosen == "native":
            raise UserError(f"{ENV}=native, but {what} cannot be built or loaded: {error}") from error
        log.warning("%s unavailable (%s); using %s", what, error, fallback)
        return None


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="native-kernel")


def parallel(kernel, head: tuple, tail: tuple, begin: int, end: int) -> None:
    """``kernel(*head, b, e, *tail)`` over [begin, end) split between PyTorch's threads."""
    chunks = max(1, min(torch.get_num_threads(), (end - begin) // 64))
    if chunks == 1:
        kernel(*head, begin, end, *tail)
        return
    bounds = [begin + (end - begin) * i // chunks for i in range(chunks + 1)]
    # ctypes releases the GIL during the call, so the chunks run in parallel.
    futures = [_pool().submit(kernel, *head, bounds[i], bounds[i + 1], *tail) for i in range(chunks)]
    for future in futures:
        future.result()

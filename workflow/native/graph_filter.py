"""llama.cpp's evaluation callback with its asking phase in C (``graph_filter.c`` beside this
file), built on first use (``workflow.native.build``).

llama.cpp asks the callback about every node of the compute graph (about 900 a decode for
a model of 30 blocks) and hands over only those it said it wanted. In Python each asking is
a call from C into the interpreter; here C answers them from the names wanted in this
decode, and the Python callback is entered only to hand a wanted tensor over. Which tensors
are computed, in which order, and their values are the same either way: only the time spent
asking changes. ``LAYERWISE_LENS_KERNEL`` chooses, as for every kernel (``torch``: the
callback in Python alone).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Collection
from pathlib import Path

from workflow.native import build as native_build
from workflow.native.build import built, mode

SOURCE = Path(__file__).with_name("graph_filter.c")
NAME = 64  # GRAPH_FILTER_NAME, ggml's GGML_MAX_NAME: a name and its terminating zero
NAMES = 1024  # GRAPH_FILTER_NAMES


class _State(ctypes.Structure):
    """``struct graph_filter`` of graph_filter.c."""

    _fields_ = [
        ("handle", ctypes.c_void_p),
        ("name_offset", ctypes.c_int64),
        ("every", ctypes.c_int32),
        ("n", ctypes.c_int32),
        ("names", (ctypes.c_char * NAME) * NAMES),
    ]


def build(**options) -> Path:
    """This kernel built (``workflow.native.build.build``'s options: compiler, directory, march)."""
    return native_build.build(SOURCE, **options)


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    return built(SOURCE, "the C filter of llama.cpp's evaluation callback",
                 "the callback in Python, which answers llama.cpp's asking the same, more slowly", load)


def load(path: Path) -> ctypes.CDLL:
    """A built filter, ready to hand to llama.cpp."""
    return ctypes.CDLL(str(path))


class GraphFilter:
    """The C callback and its state for one llama.cpp context's evaluation callback:
    ``callback`` goes in ``cb_eval`` and ``user_data`` in ``cb_eval_user_data``; ``want``
    says, before each decode, which tensors it asks for."""

    def __init__(self, library: ctypes.CDLL, handle, callback_type, name_offset: int):
        self._library = library  # the callback's code stays loaded while the filter lives
        self._handle = handle  # the Python callback: kept referenced, llama.cpp calls it through the state
        self._state = _State()
        self._state.handle = ctypes.cast(handle, ctypes.c_void_p).value
        self._state.name_offset = name_offset
        self.callback = callback_type(ctypes.cast(library.graph_filter_eval, ctypes.c_void_p).value)
        self.user_data = ctypes.cast(ctypes.pointer(self._state), ctypes.c_void_p)

    @classmethod
    def of(cls, handle, callback_type, name_offset: int) -> GraphFilter | None:
        """A filter in front of ``handle`` (a ctypes callback of ``callback_type``), or None
        where the kernels are off or this one cannot be built."""
        library = None if mode() == "torch" else _library()
        return None if library is None else cls(library, handle, callback_type, name_offset)

    def want(self, names: Collection[str], every: bool = False) -> None:
        """Ask for the tensors named ``names`` in the next decode; ``every``: pass every
        asking on to the Python callback (so, too, where the names do not fit the state)."""
        encoded = [name.encode("utf-8") for name in names]
        fits = len(encoded) <= NAMES and all(len(name) < NAME for name in encoded)
        self._state.every = 1 if every or not fits else 0
        self._state.n = 0
        if fits:
            for i, name in enumerate(encoded):
                self._state.names[i].value = name
            self._state.n = len(encoded)

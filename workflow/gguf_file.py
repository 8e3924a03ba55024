"""A GGUF file's header, read and checked in a fraction of a second, before any work.

gguf's own reader turns every metadata value into Python objects (20-30 s for a
262k-token vocabulary); a dry run cannot wait for that, and a damaged file must be
refused when the workflow is planned, with the config key and the fix in the message.
This walks the header (magic, version, metadata, tensor table) and checks that the file
is long enough to hold every tensor it lists, reading only lengths and small values.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (version 2 and 3:
little-endian, 64-bit counts).
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# Scalar value types and their sizes (GGUFValueType: 8 is a string, 9 an array).
SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
KEPT_ARRAY = 4096  # metadata arrays up to this many scalars are kept (per-layer values); longer ones skipped
KEPT_STRING = 4096  # bytes: chat templates are kept, vocabularies are arrays and skipped
MAX_NESTING = 8  # arrays of arrays: llama.cpp writes at most two levels


class GGUFError(ValueError):
    """The file is not a readable GGUF file; the message says what is wrong with it."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dims: tuple[int, ...]  # as the file lists them, innermost first
    ggml_type: int
    offset: int  # from the start of the file

    @property
    def elements(self) -> int:
        return math.prod(self.dims)


@dataclass(frozen=True)
class GGUFHeader:
    architecture: str | None
    parameters: int
    tensors: int
    data_end: int  # bytes the tensors need: the file must be at least this long
    size: int
    table: tuple[TensorEntry, ...] = ()
    # the model's own metadata (``{architecture}.*`` and ``general.*``), with the
    # architecture prefix removed from its keys; vocabularies are not read
    metadata: dict = field(default_factory=dict)

    @property
    def largest_tensor(self) -> int:
        """Elements of the largest tensor (its float32 size is 4x this)."""
        return max((t.elements for t in self.table), default=0)


class _Cursor:
    def __init__(self, data: mmap.mmap, size: int):
        self.data, self.size, self.at = data, size, 0

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.at + count > self.size:
            raise GGUFError(f"the file ends inside its header (reading {what} at byte {self.at} of {self.size}): it is truncated")
        chunk = self.data[self.at : self.at + count]
        self.at += count
        return chunk

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> bytes:
        return self.take(self.unpack("Q", what + " length"), what)

    def value(self, kind: int, what: str):
        """A scalar, a short string or a short array of scalars; None (and skipped) otherwise."""
        if kind in FORMATS:
            return self.unpack(FORMATS[kind], what)
        if kind == STRING:
            length = self.unpack("Q", what + " length")
            raw = self.take(length, what)
            return raw.decode("utf-8", "replace") if length <= KEPT_STRING else None
        if kind == ARRAY:
            start = self.at
            item, count = self.unpack("I", what), self.unpack("Q", what)
            if item in FORMATS and count <= KEPT_ARRAY:
                return list(struct.unpack(f"<{count}{FORMATS[item]}", self.take(SCALARS[item] * count, what)))
            self.at = start
        self.skip_value(kind, what)
        return None

    def skip_value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind in SCALARS:
            self.take(SCALARS[kind], what)
        elif kind == STRING:
            self.string(what)
        elif kind == ARRAY:
            if depth >= MAX_NESTING:
                raise GGUFError(f"metadata value {what!r} nests arrays more than {MAX_NESTING} deep: the file is damaged")
            item, count = self.unpack("I", what), self.unpack("Q", what)
            if item in SCALARS:
                self.take(SCALARS[item] * count, what)
            else:
                for _ in range(count):
                    self.skip_value(item, what, depth + 1)
        else:
            raise GGUFError(f"metadata value {what!r} has unknown type {kind}: the file is damaged or not GGUF")


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and check ``path``'s header; raises GGUFError saying what is wrong."""
    path = Path(path)
    stat = path.stat()
    return _read_header(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read_header(path: str, size: int, mtime_ns: int) -> GGUFHeader:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if size < 24:
        raise GGUFError(f"the file has {size} bytes, fewer than a GGUF header")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data, size)
        magic = cursor.take(4, "magic")
        if magic != MAGIC:
            raise GGUFError(f"it does not start with the GGUF magic (found {magic!r}): it is not a GGUF file")
        version = cursor.unpack("I", "version")
        if version not in VERSIONS:
            raise GGUFError(f"GGUF version {version} is not one this pipeline reads ({', '.join(map(str, VERSIONS))})")
        n_tensors, n_metadata = cursor.unpack("Q", "tensor count"), cursor.unpack("Q", "metadata count")
        alignment, values = DEFAULT_ALIGNMENT, {}
        for _ in range(n_metadata):
            key = cursor.string("a metadata key").decode("utf-8", "replace")
            kind = cursor.unpack("I", key)
            if key.startswith("tokenizer.") and kind not in FORMATS:
                cursor.skip_value(kind, key)  # vocabularies, merges, templates: the tokenizer's
            else:
                values[key] = cursor.value(kind, key)
        architecture = values.get("general.architecture") if isinstance(values.get("general.architecture"), str) else None
        if isinstance(values.get("general.alignment"), int):
            alignment = values["general.alignment"]
            if alignment == 0 or alignment & (alignment - 1):
                raise GGUFError(f"general.alignment is {alignment}, not a power of two: the file is damaged")
        prefix = f"{architecture}."
        metadata = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in values.items() if v is not None}
        parameters, end, entries = 0, 0, []
        for _ in range(n_tensors):
            name = cursor.string("a tensor name").decode("utf-8", "replace")
            dims = [cursor.unpack("Q", name) for _ in range(cursor.unpack("I", name))]
            kind, offset = cursor.unpack("I", name), cursor.unpack("Q", name)
            try:
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise GGUFError(f"tensor {name!r} has unknown type {kind}: the file is damaged or from a newer GGUF writer") from None
            elements = math.prod(dims)
            parameters += elements
            end = max(end, offset + elements // block * block_bytes)
            entries.append((name, tuple(dims), kind, offset))
        data_start = -(-cursor.at // alignment) * alignment
    table = tuple(TensorEntry(name, dims, kind, data_start + offset) for name, dims, kind, offset in entries)
    header = GGUFHeader(architecture, parameters, n_tensors, data_start + end, size, table, metadata)
    if header.data_end > size:
        raise GGUFError(
            f"the file has {size:,} bytes but its {n_tensors} tensors need {header.data_end:,}: it is truncated "
            "(an interrupted download?)"
        )
    return header


def check(path: str | os.PathLike[str], model: str, key: str, configfile: str = "config/config.yaml") -> GGUFHeader:
    """``read_header`` with a message naming the model, the config key and the fix."""
    from workflow.errors import UserError

    try:
        header = read_header(path)
    except GGUFError as error:
        raise UserError(
            f"model {model!r}: {str(path)!r} (config key {key} in {configfile}) is not a usable GGUF file: {error}. "
            "Download it again, or point the key at the right file."
        ) from None
    parts = header.metadata.get("split.count")
    if isinstance(parts, int) and parts > 1:
        number = header.metadata.get("split.no")
        raise UserError(
            f"model {model!r}: {str(path)!r} (config key {key} in {configfile}) is "
            f"{f'part {number + 1} ' if isinstance(number, int) else 'one part '}of a GGUF model published in {parts} "
            "parts, and this pipeline reads a model from one file: merge the parts with llama.cpp's "
            "`llama-gguf-split --merge FIRST-PART.gguf MERGED.gguf` and point the key at the merged file"
        )
    return header

"""A GGUF file's header, read and checked in a fraction of a second, before any work.

gguf's own reader turns every metadata value into Python objects (slow for a large
vocabulary: bench/gguf_layers.py); a dry run cannot wait for that, and a damaged file must be
refused when the workflow is planned, with the config key and the fix in the message.
This walks the header (magic, version, metadata, tensor table) reading only lengths and
small values, and checks every count and size it declares against what the file can
hold before anything is allocated or looped over: the counts of pairs, tensors, array
elements and dimensions, the lengths of keys, names and strings, each tensor's extent,
and the model's own counts (its blocks, heads, rotary dimensions and vocabulary) against
its tensors. A damaged count (a block count of 100000, 2^32 dimensions) is refused here,
not found after minutes and gigabytes of work.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (version 2 and 3:
little-endian, 64-bit counts). Limits the format sets are its own (names, keys,
dimensions); ggml's reader (src/gguf.cpp) refuses the same files.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from workflow.base.errors import UserError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 1 << 20  # ggml refuses more: padding by more than this is damage, not a layout
# Scalar value types and their sizes (GGUFValueType: 8 is a string, 9 an array).
SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
KEPT_ARRAY = 4096  # metadata arrays up to this many scalars are kept (per-layer values); longer ones skipped
KEPT_STRING = 4096  # bytes: chat templates are kept, vocabularies are arrays and skipped
MAX_NESTING = 8  # arrays of arrays: llama.cpp writes at most two levels
MAX_KEY = 65535  # bytes of a metadata key (the format's limit)
MAX_NAME = 64  # bytes of a tensor name (the format's limit)
MAX_DIMS = 4  # dimensions of a tensor (the format's "currently at most 4", ggml's GGML_MAX_DIMS)
MAX_DIM = 2**63 - 1  # ggml reads each dimension and their product as int64
# The fewest bytes an entry can take, so that a declared count is checked against the
# bytes left before it is looped over: a metadata pair (empty key, type, one-byte
# value), a tensor entry (empty name, no dimensions, type, offset), an array element.
LEAST_PAIR = 8 + 4 + 1
LEAST_TENSOR = 8 + 4 + 4 + 8
LEAST_ELEMENT = {**SCALARS, STRING: 8, ARRAY: 4 + 8}
# The model's per-layer values, written as one number or as an array of one per block.
# llama.cpp reads these with one value per block (its get_key_or_arr), refusing another length.
PER_LAYER = ("attention.head_count", "attention.head_count_kv", "feed_forward_length")
BLOCK = re.compile(r"(?:^|\.)blk\.(\d+)\.")  # llama.cpp's block tensors (blk.N.*; enc./dec. for T5)


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


def damaged(what: str) -> GGUFError:
    return GGUFError(f"{what}: the file is damaged")


class _Cursor:
    def __init__(self, data: mmap.mmap, size: int):
        self.data, self.size, self.at = data, size, 0
        self.lengths: dict[str, int] = {}  # each top-level metadata array's element count

    def need(self, count: int, what: str) -> None:
        if count < 0 or self.at + count > self.size:
            raise GGUFError(f"the file ends inside its header (reading {what} at byte {self.at} of {self.size}): it is truncated")

    def take(self, count: int, what: str) -> bytes:
        self.need(count, what)
        chunk = self.data[self.at : self.at + count]
        self.at += count
        return chunk

    def skip(self, count: int, what: str) -> None:
        self.need(count, what)
        self.at += count

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def count(self, what: str, least: int, reserved: int = 0) -> int:
        """A declared count (uint64), refused where that many entries of at least ``least``
        bytes each cannot fit in the rest of the file (less ``reserved`` bytes)."""
        number = self.unpack("Q", what)
        room = max(0, self.size - self.at - reserved)
        if number * least > room:
            raise damaged(f"{what} is {number:,}, but the {room:,} bytes left hold at most {room // least:,}")
        return number

    def string(self, what: str, limit: int) -> bytes:
        length = self.unpack("Q", what + " length")
        if length > limit:
            raise damaged(f"{what} is {length:,} bytes long, and GGUF allows at most {limit:,}")
        return self.take(length, what)

    def array_head(self, what: str) -> tuple[int, int]:
        item = self.unpack("I", what)
        if item not in LEAST_ELEMENT:
            raise GGUFError(f"metadata array {what!r} has elements of unknown type {item}: the file is damaged or not GGUF")
        return item, self.count(f"the length of metadata array {what!r}", LEAST_ELEMENT[item])

    def value(self, kind: int, what: str, keep: bool = True):
        """A scalar, a short string or a short array of scalars; None (and skipped) otherwise
        or where not ``keep`` (scalars are kept always)."""
        if kind in FORMATS:
            return self.unpack(FORMATS[kind], what)
        if kind == STRING:
            length = self.unpack("Q", what + " length")
            if keep and length <= KEPT_STRING:
                return self.take(length, what).decode("utf-8", "replace")
            self.skip(length, what)
            return None
        if kind == ARRAY:
            item, count = self.array_head(what)
            self.lengths[what] = count
            if keep and item in FORMATS and count <= KEPT_ARRAY:
                return list(struct.unpack(f"<{count}{FORMATS[item]}", self.take(SCALARS[item] * count, what)))
            self.skip_items(item, count, what, 1)
            return None
        raise GGUFError(f"metadata value {what!r} has unknown type {kind}: the file is damaged or not GGUF")

    def skip_items(self, item: int, count: int, what: str, depth: int) -> None:
        if item in SCALARS:
            self.skip(SCALARS[item] * count, what)
            return
        for _ in range(count):
            if item == STRING:
                self.skip(self.unpack("Q", what + " length"), what)
                continue
            if depth >= MAX_NESTING:
                raise damaged(f"metadata value {what!r} nests arrays more than {MAX_NESTING} deep")
            self.skip_items(*self.array_head(what), what, depth + 1)


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and check ``path``'s header; raises GGUFError saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise GGUFError("it is a directory, not a file: name the .gguf file itself")
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise GGUFError("it does not exist") from None
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
        n_tensors = cursor.count("the tensor count", LEAST_TENSOR, reserved=8)
        n_metadata = cursor.count("the metadata count", LEAST_PAIR, reserved=n_tensors * LEAST_TENSOR)
        values = {}
        for _ in range(n_metadata):
            key = cursor.string("a metadata key", MAX_KEY).decode("utf-8", "replace")
            if key in values:
                raise damaged(f"metadata key {key!r} appears twice")
            kind = cursor.unpack("I", key)
            # vocabularies, merges, templates: the tokenizer's (their lengths are kept)
            values[key] = cursor.value(kind, key, keep=not key.startswith("tokenizer.") or kind in FORMATS)
        architecture = values.get("general.architecture") if isinstance(values.get("general.architecture"), str) else None
        alignment = values.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
            raise damaged(f"general.alignment is {alignment}, not a power of two up to {MAX_ALIGNMENT:,}")
        prefix = f"{architecture}."
        metadata = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in values.items() if v is not None}
        entries, names = [], set()
        for _ in range(n_tensors):
            name = cursor.string("a tensor name", MAX_NAME).decode("utf-8", "replace")
            if name in names:
                raise damaged(f"tensor {name!r} is listed twice")
            names.add(name)
            n_dims = cursor.unpack("I", name)
            if n_dims > MAX_DIMS:
                raise damaged(f"tensor {name!r} has {n_dims:,} dimensions, and GGUF allows at most {MAX_DIMS}")
            dims = struct.unpack(f"<{n_dims}Q", cursor.take(8 * n_dims, name))
            kind, offset = cursor.unpack("I", name), cursor.unpack("Q", name)
            try:
                qtype = GGMLQuantizationType(kind)
                block, block_bytes = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise GGUFError(f"tensor {name!r} has unknown type {kind}: the file is damaged or from a newer GGUF writer") from None
            if not all(1 <= d <= MAX_DIM for d in dims) or math.prod(dims) > MAX_DIM:
                raise damaged(f"tensor {name!r} has dimensions {list(dims)}, not 1 to 2^63-1 elements each and in all")
            if (dims or (1,))[0] % block:
                raise damaged(f"tensor {name!r} has rows of {dims[0] if dims else 1} values, not whole {qtype.name} blocks of {block}")
            if offset % alignment:
                raise damaged(f"tensor {name!r} starts at data offset {offset:,}, not a multiple of the alignment {alignment}")
            entries.append((name, dims, kind, offset, math.prod(dims) // block * block_bytes))
        data_start = -(-cursor.at // alignment) * alignment
        lengths = cursor.lengths
    table = tuple(TensorEntry(name, dims, kind, data_start + offset) for name, dims, kind, offset, _ in entries)
    end, last = max(((data_start + offset + nbytes, name) for name, _, _, offset, nbytes in entries), default=(data_start, None))
    header = GGUFHeader(architecture, sum(t.elements for t in table), n_tensors, end, size, table, metadata)
    if end > size:
        raise GGUFError(
            f"the file has {size:,} bytes but its {n_tensors} tensors need {end:,} (tensor {last!r} ends there): "
            "it is truncated (an interrupted download?) or its tensor table is damaged"
        )
    previous = None
    for name, _, _, offset, nbytes in sorted(entries, key=lambda e: e[3]):
        if previous is not None and offset < previous[1]:
            raise damaged(f"tensors {previous[0]!r} and {name!r} overlap in the file (from byte {data_start + offset:,})")
        previous = (name, offset + nbytes)
    _check_model(header, lengths)
    return header


def check(path: str | os.PathLike[str], model: str, key: str, configfile: str = "config/config.yaml") -> GGUFHeader:
    """``read_header`` with a message naming the model, the config key and the fix."""

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


def _check_model(header: GGUFHeader, lengths: dict[str, int]) -> None:
    """The model's own counts against its tensors: each sizes what preparation builds (a
    block count of 100000 builds 100000 layers before any tensor is read), and a count
    smaller than the tensors would leave out the tensors it does not count."""
    arch, meta = header.architecture, header.metadata
    if arch is None:
        return
    entries = {t.name: t for t in header.table}
    blocks = {int(m.group(1)) for m in map(BLOCK.search, entries) if m}
    count = meta.get("block_count")
    # Only where the file states a block count under its architecture's name: a file whose
    # keys are not its architecture's is refused for that architecture, by name, not as damaged.
    if f"{arch}.block_count" in lengths or count is not None:
        if not _whole(count):
            raise damaged(f"{arch}.block_count is {count!r}, not a count of blocks, and the file has tensors of {len(blocks)}")
        # distinct block numbers, as many as the count and none past it: blk.0 to blk.{count - 1}
        if len(blocks) != count or blocks and max(blocks) != count - 1:
            raise damaged(f"{arch}.block_count is {count:,} but the file's tensors are those of {_blocks(blocks)}")
    per_layer = {}
    for key in PER_LAYER:
        value, length = meta.get(key), lengths.get(f"{arch}.{key}")
        if length is not None and length != count:
            raise damaged(f"{arch}.{key} has {length:,} values, one per block, but {arch}.block_count is {count}")
        if value is not None and not (all(map(_whole, value)) if isinstance(value, list) else _whole(value) and value >= 1):
            raise damaged(f"{arch}.{key} is {value!r}, not a count of {'heads' if 'head' in key else 'units'}")
        per_layer[key] = value if isinstance(value, list) else [value] * (count or 0)
    heads, kv = per_layer["attention.head_count"], per_layer["attention.head_count_kv"]
    for i in range(count or 0):
        if heads[i] is not None and kv[i] is not None and (kv[i] > heads[i] or kv[i] and heads[i] % kv[i]):
            raise damaged(f"{arch}.attention.head_count_kv is {kv[i]} and head_count {heads[i]} (block {i}): "
                          "key-value heads must divide the heads")
        for tensor, n, key in ((f"blk.{i}.attn_q.weight", heads[i], "head_count"), (f"blk.{i}.attn_k.weight", kv[i], "head_count_kv")):
            entry = entries.get(tensor)
            if n and entry is not None and len(entry.dims) == 2 and entry.dims[1] % n:
                raise damaged(f"{arch}.attention.{key} is {n} but tensor {tensor} has {entry.dims[1]} rows, not a whole number per head")
    # The rotary dimensions size the frequency tables made from them (and rope_freqs holds one factor per pair).
    rotary, head_count, width = meta.get("rope.dimension_count"), meta.get("attention.head_count"), meta.get("embedding_length")
    head_size = meta.get("attention.key_length") or (_whole(head_count) and _whole(width) and head_count and width // head_count)
    if rotary is not None and not (_whole(rotary) and (not _whole(head_size) or rotary <= head_size)):
        raise damaged(f"{arch}.rope.dimension_count is {rotary!r} but a head has {head_size} dimensions")
    factors = entries.get("rope_freqs.weight")
    if rotary is not None and factors is not None and factors.elements != rotary // 2:
        raise damaged(f"{arch}.rope.dimension_count is {rotary} but tensor rope_freqs.weight has {factors.elements} factors, not one per pair")
    embedding = entries.get("token_embd.weight")
    if embedding is None or len(embedding.dims) != 2:
        return
    width, rows = embedding.dims
    for key, wanted in (("embedding_length", width), ("vocab_size", rows)):
        if key in meta and meta[key] != wanted:
            raise damaged(f"{arch}.{key} is {meta[key]!r} but tensor token_embd.weight is {width} x {rows} (width x vocabulary)")
    tokens = lengths.get("tokenizer.ggml.tokens")
    if tokens is not None and tokens > rows:
        raise damaged(f"tokenizer.ggml.tokens lists {tokens:,} tokens but token_embd.weight embeds {rows:,}")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if tokens is not None and key in lengths and lengths[key] != tokens:
            raise damaged(f"{key} has {lengths[key]:,} values but tokenizer.ggml.tokens lists {tokens:,} tokens")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _blocks(blocks: set[int]) -> str:
    if not blocks:
        return "no block (no blk.N tensors)"
    ordered = sorted(blocks)
    gap = next((i for i, number in enumerate(ordered) if number != i), None)
    if gap is None:
        return f"{len(ordered):,} blocks, blk.0 to blk.{ordered[-1]}"
    return f"{len(ordered):,} blocks up to blk.{ordered[-1]}, without blk.{gap}"

"""Dequantising a GGUF file tensor by tensor into sharded safetensors, in bounded memory.

Loading a GGUF model through transformers dequantises every tensor into one float32
model held in memory (and preparation then copied it into a second one to save it): the
peak was several times the float32 model. Here one tensor is read from the file,
dequantised in row chunks into its float32 array, converted to the transformers layout
by transformers' own per-architecture tensor processors and name map (the ones its GGUF
loader uses, so the weights are the same bits), and appended to the open shard, whose
header is written when the shard is closed. Memory stays near the largest tensor, with
at most one transient copy of it (a processor that permutes or transposes).

The tensor table comes from workflow/gguf/file.py's header walk, not gguf's reader, which
turns every metadata value into Python objects (about 800 MB held for a 262k-token
vocabulary); the tokenizer and config, which need those values, are converted in a child
process beforehand (workflow/gguf/prepare.py). Tensors are read with plain file reads, not
through a memory map: mapped pages that were read stay counted in the resident set until
the map goes, and for a 40 GB file that is 40 GB of it.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
from workflow.base.errors import UserError

log = logging.getLogger(__name__)

MAX_SHARD_BYTES = 4 * 10**9
HEADER_RESERVE = 256 * 1024  # bytes kept for a shard's JSON header, padded with spaces
DEQUANT_CHUNK_BYTES = 16 * 2**20  # float32 output per dequantisation call (its transients are a few times this)
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32"}


class ShardWriter:
    """Sharded safetensors written one tensor at a time, nothing held in memory.

    A shard's data is written after a reserved header area; when the shard closes, its
    header (names, shapes, offsets) is written into that area and padded with spaces,
    which the safetensors format allows. Shards are named as ``save_pretrained`` names
    them (one shard: ``model.safetensors``; several: ``model-0000i-of-0000n`` and an
    index), so transformers and accelerate load the directory as any checkpoint.
    """

    def __init__(self, directory: Path, max_shard_bytes: int | None = None, reserve: int = HEADER_RESERVE):
        self.directory = Path(directory)
        self.max_shard_bytes, self.reserve = max_shard_bytes or MAX_SHARD_BYTES, reserve
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self._file = None
        self._entries: dict[str, Any] = {}
        self._offset = 0

    def _header(self, entries: dict[str, Any]) -> bytes:
        return json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":")).encode()

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if array.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: {array.dtype} is not written by this writer")
        entry = {"dtype": SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape)}
        size = array.nbytes
        if self._file is not None and (
            self._offset + size > self.max_shard_bytes
            or len(self._header({**self._entries, name: {**entry, "data_offsets": [0, 0]}})) + 64 > self.reserve
        ):
            self._close()
        if self._file is None:
            path = self.directory / f".shard-{len(self.shards) + 1}.safetensors"
            self._file = open(path, "wb")
            self._file.seek(8 + self.reserve)
            self._entries, self._offset = {}, 0
            self.shards.append((path, []))
        self._entries[name] = {**entry, "data_offsets": [self._offset, self._offset + size]}
        self._file.write(memoryview(array.reshape(-1)).cast("B"))
        self._offset += size
        self.total_bytes += size
        self.shards[-1][1].append(name)

    def _close(self) -> None:
        header = self._header(self._entries)
        if len(header) > self.reserve:  # add() closes a shard before this can happen
            raise RuntimeError(f"safetensors header of {len(header)} bytes exceeds the {self.reserve} reserved")
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self.reserve) + header.ljust(self.reserve, b" "))
        self._file.close()
        self._file = None

    def finish(self) -> list[Path]:
        """Close the last shard, give the shards their final names, write the index if several."""
        if self._file is not None:
            self._close()
        count = len(self.shards)
        names = [WEIGHTS_NAME] if count == 1 else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        finals = []
        for (path, _), name in zip(self.shards, names):
            path.rename(self.directory / name)
            finals.append(self.directory / name)
        if count > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {tensor: name for (_, tensors), name in zip(self.shards, names) for tensor in sorted(tensors)},
            }
            (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return finals

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def numpy_layout(entry) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape gguf's reader gives a tensor's data: typed values for plain
    types, bytes shaped (rows..., bytes per row) for block-quantised ones."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    kind = GGMLQuantizationType(entry.ggml_type)
    shape = tuple(reversed(entry.dims))
    plain = {
        GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F64: np.float64,
        GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
        GGMLQuantizationType.I64: np.int64,
    }
    if kind in plain:
        return np.dtype(plain[kind]), shape
    block, block_bytes = GGML_QUANT_SIZES[kind]
    return np.dtype(np.uint8), (*shape[:-1], shape[-1] // block * block_bytes)


def read_tensor(path: Path, entry) -> np.ndarray:
    """A tensor's data from the file with a plain read, laid out as gguf's reader lays it out."""
    dtype, shape = numpy_layout(entry)
    count = int(np.prod(shape))
    with open(path, "rb") as fh:
        fh.seek(entry.offset)
        raw = np.fromfile(fh, dtype=dtype, count=count)
    if raw.size != count:
        raise ValueError(f"tensor {entry.name!r}: the file ends before its data does")
    return raw.reshape(shape)


def dequantisation_rate(path: str | Path, entry, sample_bytes: int = 8 * 2**20) -> float:
    """File bytes per second dequantised here, measured on up to ``sample_bytes`` of tensor
    ``entry`` of the GGUF file at ``path``."""
    from gguf import GGMLQuantizationType

    dtype, shape = numpy_layout(entry)
    row = int(shape[-1]) * dtype.itemsize
    rows = max(1, min(int(np.prod(shape[:-1])), sample_bytes // row))
    with open(path, "rb") as fh:
        fh.seek(entry.offset)
        raw = np.frombuffer(fh.read(rows * row), dtype=dtype).reshape(rows, shape[-1])
    started = time.perf_counter()
    dequantise(raw, GGMLQuantizationType(entry.ggml_type))
    return raw.nbytes / max(time.perf_counter() - started, 1e-9)


def dequantise(raw: np.ndarray, qtype) -> np.ndarray:
    """float32 values of ``raw``, dequantised in row chunks into one preallocated array.

    gguf's dequantisers build several float arrays the size of their output on the way;
    chunking keeps those to DEQUANT_CHUNK_BYTES. The values are gguf's own, row by row.
    """
    from gguf import GGMLQuantizationType, dequantize

    from workflow.native.dequant import dequantise as native_dequantise  # torch (native.build): only when dequantising

    if qtype == GGMLQuantizationType.F32:
        return raw.view(np.float32)
    fast = native_dequantise(raw, int(qtype)) if raw.ndim else None  # the same values (workflow/native/dequant.c)
    if fast is not None:
        return fast
    if raw.ndim == 0 or raw.size == 0:
        return dequantize(raw, qtype).astype(np.float32, copy=False)
    rows = raw.reshape(-1, raw.shape[-1])
    first = dequantize(rows[:1], qtype)
    per_row = first.shape[-1]
    out = np.empty((rows.shape[0], per_row), dtype=np.float32)
    step = max(1, DEQUANT_CHUNK_BYTES // (per_row * 4))
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = dequantize(rows[start : start + step], qtype)
    return out.reshape(*raw.shape[:-1], per_row)


def tied_duplicates(model) -> set[str]:
    """State-dict names that are another name's tensor (tied weights): not written, as save_pretrained does."""
    seen: dict[int, str] = {}
    duplicates = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            duplicates.add(name)
        else:
            seen[id(tensor)] = name
    return duplicates


def stream_weights(header, gguf_path: Path, meta_model, config: dict[str, Any], out_dir: Path,
                   max_shard_bytes: int | None = None) -> dict[str, Any]:
    """Write the model's weights from the GGUF file's tensors into ``out_dir``, one at a time.

    ``header`` is the file's header (workflow/gguf/file.py: the tensor table);
    ``meta_model`` the transformers model built on the meta device (names and shapes, no
    weights); ``config`` the parsed GGUF config (what transformers' tensor processors
    read). Returns counts for the log.
    """
    # Kept as one function: one pass over the file's tensor table, each tensor read, converted
    # and written into the open shard before the next is read (the point is bounded memory).
    import torch
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    from gguf import GGMLQuantizationType

    processor = TENSOR_PROCESSORS.get(header.architecture, TensorProcessor)(config=config)
    mapping = get_gguf_hf_weights_map(meta_model, processor)
    expected = meta_model.state_dict()
    wanted = set(expected) - tied_duplicates(meta_model)
    in_file = {t.name for t in header.table}
    sources: dict[str, set[str]] = {}
    for gguf_name, hf_name in mapping.items():
        if gguf_name in in_file:
            sources.setdefault(hf_name, set()).add(gguf_name)
    writer = ShardWriter(out_dir, max_shard_bytes)
    parsed: dict[str, Any] = {"tensors": {}}  # where a processor puts tensors it merges or splits itself
    seen: set[str] = set()
    written: dict[str, tuple[int, ...]] = {}
    largest = 0
    started = time.perf_counter()

    def write(hf_name: str, value) -> None:
        nonlocal largest
        if hf_name not in expected:
            return  # a tensor the model does not have (as transformers' loader drops it)
        array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        array = array.astype(np.float32, copy=False)
        if tuple(array.shape) != tuple(expected[hf_name].shape):
            raise UserError(
                f"{gguf_path.name}: tensor {hf_name} has shape {tuple(array.shape)} in the file but the model built "
                f"from its metadata needs {tuple(expected[hf_name].shape)}; the file's metadata and tensors disagree"
            )
        if hf_name in wanted:
            writer.add(hf_name, array)
            written[hf_name] = tuple(array.shape)
            largest = max(largest, array.nbytes)

    try:
        for number, tensor in enumerate(header.table, 1):
            weights = dequantise(read_tensor(gguf_path, tensor), GGMLQuantizationType(tensor.ggml_type))
            result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=mapping, parsed_parameters=parsed)
            seen.add(tensor.name)
            del weights
            if result.name in mapping:
                write(mapping[result.name], result.weights)
            del result
            # Tensors a processor assembles itself (merged or split experts) are written once
            # every file tensor they are made from has been read.
            for hf_name in [n for n in parsed["tensors"] if sources.get(n, set()) <= seen]:
                write(hf_name, parsed["tensors"].pop(hf_name))
            if number % 50 == 0 or number == len(header.table):
                log.info("dequantised %d of %d tensors (%.1f s)", number, len(header.table), time.perf_counter() - started)
        missing = sorted(wanted - set(written))
        if missing:
            raise UserError(
                f"{gguf_path.name}: the file has no tensor for {len(missing)} of the model's weights "
                f"({', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}); transformers would fill them with "
                "random values. The file is incomplete or its architecture is converted differently; use the "
                "original safetensors checkpoint (source: hf or local)."
            )
        shards = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return {"tensors": len(written), "shards": len(shards), "weights_bytes": writer.total_bytes, "largest_tensor_bytes": largest}


# more than 6 parameters: the plan, its reader and the folder it writes, as prepare gives them
def stream_planned(plan, read, config, expected: dict[str, Any], out_dir: Path, source: str,
                   max_shard_bytes: int | None = None) -> dict[str, Any]:
    """Write the parameters of an own-table plan (workflow/gguf/arch.py) into ``out_dir``,
    block by block in file order, each made from its file tensors just before it is written."""

    writer = ShardWriter(out_dir, max_shard_bytes)
    largest = 0
    started = time.perf_counter()
    names = sorted(plan.rules, key=lambda n: (plan.block_of(n) is not None, plan.block_of(n) or 0, n))
    try:
        for number, name in enumerate(names, 1):
            array = np.asarray(plan.rules[name].make(read, config), dtype=np.float32)
            if tuple(array.shape) != tuple(expected[name].shape):
                raise UserError(
                    f"{source}: tensor {name} has shape {tuple(array.shape)} in the file but the model built "
                    f"from its metadata needs {tuple(expected[name].shape)}; the file's metadata and tensors disagree"
                )
            writer.add(name, array)
            largest = max(largest, array.nbytes)
            del array
            if number % 50 == 0 or number == len(names):
                log.info("wrote %d of %d weights (%.1f s)", number, len(names), time.perf_counter() - started)
        shards = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return {"tensors": len(names), "shards": len(shards), "weights_bytes": writer.total_bytes, "largest_tensor_bytes": largest}

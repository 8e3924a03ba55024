"""Every count and size a GGUF header declares is checked against what the file can hold
before anything is allocated or looped over (workflow/gguf/file.py), and refused naming
the key or tensor: counts of pairs, tensors, array elements and dimensions, lengths of
keys, names and strings, each tensor's extent, and the model's own counts (blocks, heads,
vocabulary) against its tensors. The damaged files are the tiny Llama's GGUF with one
field changed (tests/gguf_writer.py)."""

from __future__ import annotations

import re
import struct

import pytest

from gguf_writer import field_at, patch, rewrite_gguf, write_gguf
from tiny import make_model_dir
from workflow.gguf.file import GGUFError, check, read_header

EMBEDDING = "token_embd.weight"  # the first tensor the tiny writer lists: 64 x 320


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-limits")
    hf = make_model_dir(root / "hf", "llama")
    return {"f32": write_gguf(hf, root / "tiny.gguf", "llama"),
            "quantised": write_gguf(hf, root / "tiny-q.gguf", "llama", quantise=True)}


def refused(path, *words):
    with pytest.raises(GGUFError) as error:
        read_header(path)
    message = str(error.value)
    for word in words:
        assert word in message, (word, message)
    return message


def damaged(tmp_path, tiny, change, kind="f32"):
    path = tmp_path / "damaged.gguf"
    path.write_bytes(change(tiny[kind].read_bytes()))
    return path


def test_the_tiny_files_are_read(tiny):
    for path in tiny.values():
        header = read_header(path)
        assert header.metadata["block_count"] == 3 and len(header.table) == 2 + 1 + 3 * 9


# ------------------------------------------------------------------ counts and lengths of the format


@pytest.mark.parametrize("field, at, words", [
    ("tensor count", 8, ["the tensor count is 1,099,511,627,776", "hold at most"]),
    ("metadata count", 16, ["the metadata count is 1,099,511,627,776", "hold at most"]),
])
def test_a_count_the_file_cannot_hold_is_refused_before_it_is_looped_over(field, at, words, tiny, tmp_path):
    refused(damaged(tmp_path, tiny, lambda d: patch(d, at, "Q", 2**40)), *words, "damaged")


def test_an_array_longer_than_the_file_can_hold_is_refused_by_its_key(tiny, tmp_path):
    # value type (4 bytes), element type (4), then the length
    path = damaged(tmp_path, tiny, lambda d: patch(d, field_at(d, "tokenizer.ggml.tokens") + 8, "Q", 2**40))
    refused(path, "metadata array 'tokenizer.ggml.tokens'", "1,099,511,627,776", "damaged")


def test_a_key_or_a_name_longer_than_gguf_allows_is_refused(tiny, tmp_path):
    key = "llama.block_count"
    path = damaged(tmp_path, tiny, lambda d: patch(d, field_at(d, key) - len(key) - 8, "Q", 2**20))
    refused(path, "a metadata key is 1,048,576 bytes long", "at most 65,535")
    path = damaged(tmp_path, tiny, lambda d: patch(d, field_at(d, EMBEDDING) - len(EMBEDDING) - 8, "Q", 65))
    refused(path, "a tensor name is 65 bytes long", "at most 64")


def test_a_long_string_value_is_skipped_without_being_copied(tiny, tmp_path):
    """A string longer than is kept (a chat template past KEPT_STRING) is stepped over."""
    path = rewrite_gguf(tiny["f32"], tmp_path / "long.gguf", {"general.description": "x" * 3_000_000})
    import tracemalloc

    tracemalloc.start()
    try:
        header = read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "general.description" not in header.metadata
    assert peak < 1_000_000, peak


def test_repeated_keys_and_names_are_refused(tiny, tmp_path):
    # two keys of the same length: one renamed to the other
    path = damaged(tmp_path, tiny, lambda d: d.replace(b"llama.context_length", b"general.architecture", 1))
    refused(path, "metadata key 'general.architecture' appears twice")
    path = damaged(tmp_path, tiny, lambda d: d.replace(b"blk.0.attn_k.weight", b"blk.0.attn_q.weight", 1))
    refused(path, "tensor 'blk.0.attn_q.weight' is listed twice")


def test_an_alignment_past_what_ggml_allows_is_refused(tmp_path):
    key = b"general.alignment"
    metadata = struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, 1 << 30)
    path = tmp_path / "aligned.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + metadata + b"\0" * 64)
    refused(path, "general.alignment is 1073741824", "up to 1,048,576")


# ------------------------------------------------------------------ tensor entries


def test_a_dimension_count_past_four_is_refused_without_reading_the_dimensions(tiny, tmp_path):
    """Issue 42, item 12: n_dims 0xFFFFFFFF read 8 bytes per dimension to the end of a 1 GB
    file (109 s, 2.1 GB for a dry run). Here the file has 64 MB of data after the tensors:
    the refusal comes before a single dimension is read."""
    import tracemalloc

    path = damaged(tmp_path, tiny, lambda d: patch(d, field_at(d, EMBEDDING), "I", 0xFFFFFFFF))
    with open(path, "r+b") as fh:
        fh.truncate(64 * 2**20)
    tracemalloc.start()
    try:
        refused(path, f"tensor '{EMBEDDING}' has 4,294,967,295 dimensions", "at most 4", "damaged")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak


@pytest.mark.parametrize("value", [0, 2**63])
def test_a_dimension_of_no_elements_or_past_int64_is_refused(value, tiny, tmp_path):
    path = damaged(tmp_path, tiny, lambda d: patch(d, field_at(d, EMBEDDING) + 4, "Q", value))
    refused(path, f"tensor '{EMBEDDING}' has dimensions [{value}, 320]", "damaged")


def test_a_tensor_beyond_the_end_of_the_file_is_named(tiny, tmp_path):
    path = damaged(tmp_path, tiny, lambda d: patch(d, field_at(d, EMBEDDING) + 12, "Q", 2**40))
    refused(path, f"tensor '{EMBEDDING}' ends there", "it is truncated")


def test_a_row_of_part_of_a_quantised_block_is_refused(tiny, tmp_path):
    path = damaged(tmp_path, tiny, lambda d: patch(d, field_at(d, EMBEDDING) + 4, "Q", 48), "quantised")
    refused(path, f"tensor '{EMBEDDING}' has rows of 48 values, not whole Q8_0 blocks of 32")


def test_unaligned_or_overlapping_tensor_data_is_refused(tiny, tmp_path):
    def offset_of(data, name):  # n_dims, two dims, type, then the offset
        return field_at(data, name) + 4 + 16 + 4

    path = damaged(tmp_path, tiny, lambda d: patch(d, offset_of(d, EMBEDDING), "Q", 1))
    refused(path, f"tensor '{EMBEDDING}' starts at data offset 1, not a multiple of the alignment 32")
    path = damaged(tmp_path, tiny, lambda d: patch(d, offset_of(d, "output.weight"), "Q", 0))
    refused(path, "overlap in the file")


# ------------------------------------------------------------------ the model's counts against its tensors


@pytest.mark.parametrize("count, words", [
    (2, ["llama.block_count is 2", "3 blocks, blk.0 to blk.2"]),  # issue 42, item 6: blk.2 was dropped
    (100000, ["llama.block_count is 100,000", "3 blocks, blk.0 to blk.2"]),  # item 11: 100000 layers built
])
def test_a_block_count_that_disagrees_with_the_blocks_in_the_file_is_refused(count, words, tiny, tmp_path):
    path = rewrite_gguf(tiny["f32"], tmp_path / "blocks.gguf", {"llama.block_count": count})
    refused(path, *words, "damaged")


def test_a_block_missing_from_the_middle_is_refused(tiny, tmp_path):
    path = rewrite_gguf(tiny["f32"], tmp_path / "gap.gguf", drop=lambda name: name.startswith("blk.1."))
    refused(path, "llama.block_count is 3", "2 blocks up to blk.2, without blk.1")


@pytest.mark.parametrize("values, words", [
    ({"llama.attention.head_count": 0}, ["llama.attention.head_count is 0, not a count of heads"]),
    ({"llama.attention.head_count": 6}, ["llama.attention.head_count is 6", "blk.0.attn_q.weight has 64 rows"]),
    ({"llama.attention.head_count_kv": 3}, ["head_count_kv is 3 and head_count 4", "must divide"]),
    ({"llama.attention.head_count_kv": 8}, ["head_count_kv is 8 and head_count 4"]),
    ({"llama.attention.head_count": [4, 4]}, ["llama.attention.head_count has 2 values, one per block", "block_count is 3"]),
    ({"llama.feed_forward_length": [128] * 4}, ["llama.feed_forward_length has 4 values"]),
])
def test_head_counts_that_do_not_fit_the_blocks_or_their_tensors_are_refused(values, words, tiny, tmp_path):
    refused(rewrite_gguf(tiny["f32"], tmp_path / "heads.gguf", values), *words, "damaged")


def test_per_layer_head_counts_that_fit_are_read(tiny, tmp_path):
    path = rewrite_gguf(tiny["f32"], tmp_path / "per-layer.gguf",
                        {"llama.attention.head_count": [4, 4, 4], "llama.attention.head_count_kv": [2, 2, 2]})
    assert read_header(path).metadata["attention.head_count_kv"] == [2, 2, 2]


def test_rotary_dimensions_past_a_head_or_its_factors_are_refused(tiny, tmp_path):
    """rope.dimension_count sizes the rotary frequency tables (np.arange(0, dim, 2) in
    gguf_arch's Llama 3 scaling, the model's inv_freq): at most a head's dimensions (16
    here), and rope_freqs holds one factor per pair of them."""
    import numpy as np

    refused(rewrite_gguf(tiny["f32"], tmp_path / "a.gguf", {"llama.rope.dimension_count": 1_000_000}),
            "llama.rope.dimension_count is 1000000 but a head has 16 dimensions")
    refused(rewrite_gguf(tiny["f32"], tmp_path / "b.gguf", {"llama.rope.dimension_count": 16},
                         tensors={"rope_freqs.weight": np.ones(5)}),
            "tensor rope_freqs.weight has 5 factors, not one per pair")
    fits = rewrite_gguf(tiny["f32"], tmp_path / "c.gguf", {"llama.rope.dimension_count": 16},
                        tensors={"rope_freqs.weight": np.ones(8)})
    assert read_header(fits).metadata["rope.dimension_count"] == 16


def test_a_vocabulary_or_width_that_disagrees_with_the_embedding_is_refused(tiny, tmp_path):
    import gguf

    refused(rewrite_gguf(tiny["f32"], tmp_path / "a.gguf", {"llama.embedding_length": 65}),
            "llama.embedding_length is 65 but tensor token_embd.weight is 64 x 320")
    refused(rewrite_gguf(tiny["f32"], tmp_path / "b.gguf", {"llama.vocab_size": 100000}),
            "llama.vocab_size is 100000 but tensor token_embd.weight is 64 x 320")
    tokens = gguf.GGUFReader(tiny["f32"]).fields["tokenizer.ggml.tokens"].contents()
    types = gguf.GGUFReader(tiny["f32"]).fields["tokenizer.ggml.token_type"].contents()
    refused(rewrite_gguf(tiny["f32"], tmp_path / "c.gguf", {"tokenizer.ggml.tokens": tokens + ["extra"],
                                                            "tokenizer.ggml.token_type": types + [1]}),
            "tokenizer.ggml.tokens lists 321 tokens but token_embd.weight embeds 320")
    refused(rewrite_gguf(tiny["f32"], tmp_path / "d.gguf", {"tokenizer.ggml.token_type": types[:-1]}),
            "tokenizer.ggml.token_type has 319 values but tokenizer.ggml.tokens lists 320 tokens")


# ------------------------------------------------------------------ the path itself


def test_a_directory_is_called_a_directory(tmp_path):
    with pytest.raises(GGUFError, match="it is a directory"):
        read_header(tmp_path)
    from workflow.base.errors import UserError

    with pytest.raises(UserError, match=re.escape(f"'{tmp_path}' (config key models.m.path in config/config.yaml) is not a usable GGUF file: it is a directory")):
        check(tmp_path, "m", "models.m.path")

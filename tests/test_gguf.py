"""GGUF checkpoints: a tiny model written as GGUF, dequantised by prepare_model, gives the same records."""

import pytest

from gguf_writer import finish, write_gguf
from tiny import make_model_dir, make_qwen2_dir, make_tokenizer, save_random
from workflow.config.settings import LensSettings
from workflow.lens.run import read_probes
from workflow.model.load import load_model
from workflow.gguf.prepare import prepare_model

PROBES = [
    {"id": "capital", "prompt": "The capital of Germany is", "answer": " Berlin"},
    {"id": "quote", "prompt": 'Köln, "Zürich" and Tokyo', "answer": " Paris"},
]


def tiny_gemma3(path):
    """Gemma 3 without the settings a GGUF file cannot carry (soft-capping)."""
    from transformers import Gemma3TextConfig

    tokenizer = make_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=8, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return save_random(path, config, tokenizer)


MAKERS = {
    "llama": lambda path: make_model_dir(path, "llama"),
    "qwen2": make_qwen2_dir,
    "gemma3": tiny_gemma3,
}


@pytest.mark.parametrize("arch", list(MAKERS))
def test_dequantised_gguf_gives_the_records_of_the_original_weights(arch, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    original = MAKERS[arch](tmp_path / "hf")
    gguf_path = write_gguf(original, tmp_path / f"tiny-{arch}.gguf", arch)
    prepared = tmp_path / "prepared"
    manifest = prepare_model("tiny", {"source": "gguf", "path": str(gguf_path)}, prepared)
    assert manifest["gguf_architecture"] == arch and len(manifest["gguf_sha256"]) == 64
    want_weights, got_weights = load_file(original / "model.safetensors"), load_file(prepared / "model.safetensors")
    assert want_weights.keys() == got_weights.keys()
    for name, tensor in want_weights.items():
        # Exact but for Gemma's norms, stored as 1 + w and read back as (1 + w) - 1.
        assert torch.allclose(tensor, got_weights[name], rtol=0, atol=1e-6), name
    if arch == "gemma3":
        # A GGUF stores Gemma's vocabulary the SentencePiece way, which the tiny byte-level
        # BPE tokenizer is not; the weights path is what is compared here (the real
        # Gemma GGUF's tokenizer is checked end to end against transformers' own loading).
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(original / name, prepared / name)

    def records(path, prepared_dir=None):
        entry = {"source": "local", "path": str(path)}
        return read_probes(load_model("tiny", entry, prepared_dir, device="cpu", dtype="float32"), PROBES, LensSettings(top_k=3))

    wanted, found = records(original), records(prepared)
    assert [p["input_ids"] for p in found.probes] == [p["input_ids"] for p in wanted.probes]
    want, got = wanted.rows, found.rows
    assert len(got) == len(want)
    for a, b in zip(want, got):
        assert (a["layer"], a["position"], a["topk_tokens"]) == (b["layer"], b["position"], b["topk_tokens"])
        assert a["top1_prob"] == pytest.approx(b["top1_prob"], abs=1e-5)
        assert a["answer_prob"] == pytest.approx(b["answer_prob"], abs=1e-5)


def test_metadata_conversion_parses_the_gguf_file_once(tmp_path, monkeypatch):
    """transformers opens the file three times (tokenizer, config, parsed config); each parse
    of a large vocabulary takes tens of seconds, so the conversion shares one reader."""
    import gguf

    from workflow.gguf.prepare import convert_metadata

    original = make_model_dir(tmp_path / "hf", "llama")
    gguf_path = write_gguf(original, tmp_path / "tiny.gguf", "llama")
    opened = []
    reader = gguf.GGUFReader

    def counting(path, mode="r"):
        opened.append(str(path))
        return reader(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    (tmp_path / "out").mkdir()
    convert_metadata(gguf_path, tmp_path / "out", tmp_path / "parsed.json")
    assert len(opened) == 1
    assert gguf.GGUFReader is counting  # put back as it was after the conversion
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "config.json").is_file()


def children_of(module, monkeypatch) -> list:
    """The command lines of the child processes ``module`` starts from now on (it still starts them)."""
    started = []
    real_run = module.subprocess.run

    def run(command, **kwargs):
        started.append(command)
        return real_run(command, **kwargs)

    monkeypatch.setattr(module.subprocess, "run", run)
    return started


def test_a_large_files_metadata_is_converted_in_a_child_and_a_small_ones_here_to_the_same_files(tmp_path, monkeypatch):
    """A large vocabulary's Python objects are not all handed back to the system when freed,
    so a file of IN_PROCESS_BYTES or more converts its tokenizer and config in a child
    process; a smaller one here, where a child's imports would be most of the work. Both
    write the same files; a failure either way names the model and the file."""

    from workflow.base.errors import UserError
    from workflow.gguf import prepare

    original = make_model_dir(tmp_path / "hf", "llama")
    gguf_path = write_gguf(original, tmp_path / "tiny.gguf", "llama")
    children = children_of(prepare, monkeypatch)
    made = {}
    for way, limit in (("here", prepare.IN_PROCESS_BYTES), ("child", 0)):
        monkeypatch.setattr(prepare, "IN_PROCESS_BYTES", limit)
        prepare_model("tiny", {"source": "gguf", "path": str(gguf_path)}, tmp_path / way)
        made[way] = {p.name: p.read_bytes() for p in sorted((tmp_path / way).iterdir()) if p.name != "manifest.json"}
        assert len(children) == (way == "child"), children
    assert made["here"] == made["child"] and "tokenizer.json" in made["here"] and "config.json" in made["here"]

    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(gguf_path.read_bytes())
    monkeypatch.setattr(prepare, "convert_metadata", lambda *a: (_ for _ in ()).throw(ValueError("no tokenizer model")))
    monkeypatch.setattr(prepare, "IN_PROCESS_BYTES", prepare.IN_PROCESS_BYTES + 2**30)
    with pytest.raises(UserError, match="model 'tiny': converting the tokenizer and config of damaged.gguf failed: "
                                        "ValueError: no tokenizer model"):
        prepare_model("tiny", {"source": "gguf", "path": str(damaged)}, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    # The child's failure: the last lines it wrote to stderr, after the same words.
    failing = tmp_path / "failing-python"
    failing.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\necho 'ValueError: no tokenizer model' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setattr(prepare, "IN_PROCESS_BYTES", 0)
    monkeypatch.setattr(prepare.sys, "executable", str(failing))
    with pytest.raises(UserError, match="model 'tiny': converting the tokenizer and config of damaged.gguf failed:\n"
                                        "Traceback .*\nValueError: no tokenizer model$"):
        prepare_model("tiny", {"source": "gguf", "path": str(damaged)}, tmp_path / "refused")
    assert not (tmp_path / "refused").exists() and len(children) == 2


def state_dict_of(directory):
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


@pytest.mark.parametrize("arch", list(MAKERS))
def test_streamed_preparation_gives_the_weights_and_records_of_whole_loading(arch, tmp_path, monkeypatch):
    """Quantised tensors (Q8_0, Q4_1, Q5_0, F16), dequantised in many small row chunks and
    written across several shards, are the same bits as transformers' own whole-model
    GGUF loading (the way preparation worked before), and give the same records."""
    import json
    import shutil

    import torch

    from workflow.gguf import stream as gguf_stream

    original = MAKERS[arch](tmp_path / "hf")
    gguf_path = write_gguf(original, tmp_path / f"tiny-{arch}.gguf", arch, quantise=True)
    entry = {"source": "gguf", "path": str(gguf_path)}
    whole = tmp_path / "whole"
    prepare_model("tiny", entry, whole, whole=True)
    monkeypatch.setattr(gguf_stream, "DEQUANT_CHUNK_BYTES", 4096)  # a few rows per call
    monkeypatch.setattr(gguf_stream, "MAX_SHARD_BYTES", 200_000)
    streamed = tmp_path / "streamed"
    manifest = prepare_model("tiny", entry, streamed)
    assert manifest["preparation"] == "streamed" and json.loads((whole / "manifest.json").read_text())["preparation"] == "whole"
    shards = sorted(p.name for p in streamed.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    want, got = state_dict_of(whole), state_dict_of(streamed)
    assert sorted(index["weight_map"]) == sorted(got) == sorted(want)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in got.values())
    for name, tensor in want.items():
        assert got[name].dtype == torch.float32 and torch.equal(tensor, got[name]), name
    quantised = state_dict_of(original)
    changed = [n for n in quantised if n in got and not torch.allclose(quantised[n], got[n], rtol=0, atol=1e-6)]
    assert changed, "the GGUF was meant to hold quantised tensors"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (streamed / name).read_text() == (whole / name).read_text(), name
    if arch == "gemma3":  # the tiny BPE tokenizer does not survive Gemma's GGUF vocabulary (see above)
        for directory in (whole, streamed):
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy2(original / name, directory / name)

    def records(path):
        return read_probes(load_model("tiny", {"source": "local", "path": str(path)}, None, device="cpu", dtype="float32"), PROBES, LensSettings(top_k=3))

    want_rows, got_rows = records(whole).rows, records(streamed).rows
    assert want_rows == got_rows


def test_streamed_preparation_holds_about_one_tensor(tmp_path, monkeypatch):
    """Memory is bounded by the largest tensor, not the model: the peak of the allocations
    while streaming a 12-layer model (tracemalloc sees numpy's) stays under 2.5x its
    largest float32 tensor, while the model is more than 12x that tensor. The row chunks
    are scaled down with the model (16 MB against a real model's hundreds of MB)."""
    import tracemalloc

    from workflow.gguf import stream as gguf_stream

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from workflow.gguf.file import read_header
    from workflow.gguf.stream import stream_weights
    from workflow.gguf.prepare import _converted_metadata

    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1024, num_hidden_layers=12, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    original = save_random(tmp_path / "hf", config, tokenizer)
    gguf_path = write_gguf(original, tmp_path / "tiny.gguf", "llama", quantise=True)
    out = tmp_path / "out"
    out.mkdir()
    parsed = _converted_metadata("tiny", gguf_path, out, tmp_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch.float32)
    header = read_header(gguf_path)
    largest = header.largest_tensor * 4
    monkeypatch.setattr(gguf_stream, "DEQUANT_CHUNK_BYTES", largest // 16)
    assert header.parameters * 4 > 12 * largest
    tracemalloc.start()
    try:
        stats = stream_weights(header, gguf_path, model, parsed, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats["largest_tensor_bytes"] == largest
    assert peak < 2.5 * largest, (peak, largest)


def test_a_gguf_missing_a_weight_is_refused_without_output(tmp_path):
    """A file without one of the model's tensors is refused naming the tensor; transformers'
    loader would have filled it with random values."""
    import gguf
    import numpy as np

    from workflow.base.errors import UserError

    original = make_model_dir(tmp_path / "hf", "llama")
    full = write_gguf(original, tmp_path / "full.gguf", "llama")
    reader = gguf.GGUFReader(full)
    writer = gguf.GGUFWriter(str(tmp_path / "missing.gguf"), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(field.name, value)
        else:
            writer.add_key_value(field.name, value, kind)
    for tensor in reader.tensors:
        if tensor.name != "blk.1.ffn_down.weight":
            writer.add_tensor(tensor.name, np.array(tensor.data), raw_shape=list(reversed(tensor.shape.tolist())))
    finish(writer)
    prepared = tmp_path / "prepared"
    with pytest.raises(UserError, match=r"missing.gguf.*model.layers.1.mlp.down_proj.weight"):
        prepare_model("tiny", {"source": "gguf", "path": str(tmp_path / "missing.gguf")}, prepared)
    assert not prepared.exists() and not list(tmp_path.glob(".prepared*"))


def test_preparation_asks_the_scheduler_for_memory_by_the_largest_tensor_not_the_model(tmp_path):
    """Streamed preparation's memory does not grow with the number of layers; its request
    to a scheduler (mem_mb) does not either, while the run time it asks for does."""
    from transformers import LlamaConfig

    from workflow.model.resources import prepare_resources

    tokenizer = make_tokenizer()
    requests = []
    for layers in (2, 12):
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        original = save_random(tmp_path / f"hf-{layers}", config, tokenizer)
        path = write_gguf(original, tmp_path / f"tiny-{layers}.gguf", "llama")
        requests.append(prepare_resources({"source": "gguf", "path": str(path)}, "tiny"))
    assert requests[0]["mem_mb"] == requests[1]["mem_mb"]
    assert requests[1]["runtime"] >= requests[0]["runtime"]


def test_a_block_count_smaller_than_the_file_is_refused_before_any_work(tmp_path):
    """Issue 42, item 6: a file whose block_count (2) is smaller than its tensor table (3
    blocks) was prepared as a 2-layer model, blk.2 dropped without a word ("dequantised 30
    of 30 tensors", 21 written). It is refused naming the key, leaving nothing behind."""
    from gguf_writer import rewrite_gguf
    from workflow.base.errors import UserError

    full = write_gguf(make_model_dir(tmp_path / "hf", "llama"), tmp_path / "full.gguf", "llama")
    path = rewrite_gguf(full, tmp_path / "fewer.gguf", {"llama.block_count": 2})
    prepared = tmp_path / "prepared"
    with pytest.raises(UserError, match=r"fewer\.gguf.*llama\.block_count is 2 but the file's tensors are those of 3 blocks"):
        prepare_model("tiny", {"source": "gguf", "path": str(path)}, prepared)
    assert not prepared.exists() and not list(tmp_path.glob(".prepared*"))


@pytest.mark.parametrize("damage", ["fewer blocks", "100000 blocks", "2^32 dimensions"])
def test_a_gguf_header_whose_counts_the_file_cannot_hold_is_refused_when_planning(damage, tiny_dirs, tmp_path):
    """Issue 42, items 6, 11 and 12: a block_count of 2 for 3 blocks and one of 100000 both
    passed the dry run (the second then built 100000 layers in prepare_model, 20 GB); a
    tensor's n_dims of 0xFFFFFFFF in a 1 GB file took the dry run 109 s and 2.1 GB. Each
    is refused by the dry run in one line naming the model, the file, the config key and
    the GGUF key or tensor."""
    from conftest import tiny_config
    from gguf_writer import field_at, patch, rewrite_gguf
    from pipeline import planning_error, scratch_copy, snakemake

    full = write_gguf(tiny_dirs["llama"], tmp_path / "full.gguf", "llama")
    path = tmp_path / "model.gguf"
    if damage == "2^32 dimensions":
        data = full.read_bytes()
        path.write_bytes(patch(data, field_at(data, "token_embd.weight"), "I", 0xFFFFFFFF))
        with open(path, "r+b") as fh:
            fh.truncate(64 * 2**20)
        expected = "tensor 'token_embd.weight' has 4,294,967,295 dimensions, and GGUF allows at most 4"
    else:
        count = 2 if damage == "fewer blocks" else 100000
        rewrite_gguf(full, path, {"llama.block_count": count})
        expected = f"llama.block_count is {count:,} but the file's tensors are those of 3 blocks, blk.0 to blk.2"
    config = tiny_config(tiny_dirs)
    config["models"] = {"broken": {"source": "gguf", "path": str(path)}}
    result = snakemake(scratch_copy(tmp_path / "wd", config), "-n")
    planning_error(result, "model 'broken'", f"'{path}'", "config key models.broken.path", expected)


def test_the_architectures_transformers_reads_are_listed_once_per_machine(tmp_path, monkeypatch):
    """Listing them imports transformers' GGUF tables (seconds, in a child process), too long
    for every dry run and for every new checkout: the list is kept in the per-user cache under
    transformers' version and read back after, by any checkout."""
    import json
    from importlib import metadata

    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from workflow.gguf import prepare

    monkeypatch.setenv("LAYERWISE_LENS_CACHE", str(tmp_path / "cache"))
    children = children_of(prepare, monkeypatch)
    listed = prepare.readable_gguf_architectures()
    assert listed == sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}) and "llama" in listed
    kept = tmp_path / "cache" / "gguf-architectures" / f"transformers-{metadata.version('transformers')}.json"
    assert json.loads(kept.read_text()) == listed and len(children) == 1
    kept.write_text(json.dumps(["llama", "kept"]))  # what was listed before, read back: no child
    assert prepare.readable_gguf_architectures() == ["llama", "kept"] and len(children) == 1

"""GGUF checkpoints: a tiny model written as GGUF, dequantised by prepare_model, gives the same records."""

import pytest

from gguf_writer import write_gguf
from tiny import make_model_dir, make_qwen2_dir, make_tokenizer, save_random
from workflow.lens_setup import LensSettings
from workflow.exp001.run import run_lens
from workflow.models import load_model
from workflow.prepare import prepare_model

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
        return run_lens(load_model("tiny", entry, prepared_dir, "cpu", "float32"), PROBES, LensSettings(top_k=3))

    (want_summary, want), (got_summary, got) = records(original), records(prepared)
    assert [p["input_ids"] for p in got_summary["probes"]] == [p["input_ids"] for p in want_summary["probes"]]
    assert len(got) == len(want)
    for a, b in zip(want, got):
        assert (a["layer"], a["position"], a["topk_tokens"]) == (b["layer"], b["position"], b["topk_tokens"])
        assert a["top1_prob"] == pytest.approx(b["top1_prob"], abs=1e-5)
        assert a["answer_prob"] == pytest.approx(b["answer_prob"], abs=1e-5)


def test_preparation_parses_the_gguf_file_once(tmp_path, monkeypatch):
    """transformers opens the file three times (tokenizer, config, weights); each parse of a
    large vocabulary takes tens of seconds, so preparation shares one reader."""
    import gguf

    original = make_model_dir(tmp_path / "hf", "llama")
    gguf_path = write_gguf(original, tmp_path / "tiny.gguf", "llama")
    opened = []
    reader = gguf.GGUFReader

    def counting(path, mode="r"):
        opened.append(str(path))
        return reader(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    prepare_model("tiny", {"source": "gguf", "path": str(gguf_path)}, tmp_path / "prepared")
    assert len(opened) == 1
    assert gguf.GGUFReader is counting  # put back as it was after preparation

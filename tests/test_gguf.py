"""GGUF checkpoints: a tiny model written as GGUF, dequantised by prepare_model, gives the same records."""

import pytest

from gguf_writer import write_gguf
from tiny import make_model_dir, make_qwen2_dir
from workflow.experiment import LensSettings, run_lens
from workflow.models import load_model, prepare_model

PROBES = [
    {"id": "capital", "prompt": "The capital of Germany is", "answer": " Berlin"},
    {"id": "quote", "prompt": 'Köln, "Zürich" and Tokyo', "answer": " Paris"},
]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_dequantised_gguf_gives_the_records_of_the_original_weights(arch, tmp_path):
    original = make_model_dir(tmp_path / "hf", "llama") if arch == "llama" else make_qwen2_dir(tmp_path / "hf")
    gguf_path = write_gguf(original, tmp_path / f"tiny-{arch}.gguf", arch)
    prepared = tmp_path / "prepared"
    manifest = prepare_model("tiny", {"source": "gguf", "path": str(gguf_path)}, prepared)
    assert manifest["gguf_architecture"] == arch and len(manifest["gguf_sha256"]) == 64

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

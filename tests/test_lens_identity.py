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
from workflow.base.errors import UserError
from workflow.config.settings import LensSettings
from workflow.lens.session import LensIdentityError, lens_heads
from workflow.lens.run import read_probes

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
    read = read_probes(model, probes[:1], LensSettings(top_k=3))
    rows = read.rows
    layers, hf_logits, ids = reference_layers(tiny_dirs[arch], probes[0]["prompt"])
    probs = layers.softmax(-1)
    final_lp = hf_logits.log_softmax(-1)
    answer = read.probes[0]["answer_token_id"]
    assert read.probes[0]["input_ids"] == ids
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
    # Where the answer is top-1, from the reference's own probabilities at the last position.
    top1 = [bool((probs[layer, -1] > probs[layer, -1, answer]).sum() == 0) for layer in range(len(layers))]
    first = next((layer for layer, is_top in enumerate(top1) if is_top), None)
    assert read.probes[0]["first_top1_layer"] == first
    assert read.probes[0]["identity_check"]["max_abs_prob_diff"] <= 1e-4


@pytest.mark.parametrize("positions", ["all", "last"])
@pytest.mark.parametrize("arch", ARCHS)
def test_the_identity_check_reads_the_lenss_own_last_layer_logits(arch, positions, loaded, tiny_dirs, probes, monkeypatch):
    """The identity check compares the model's logits with the reference head's logits as the
    lens's own pass over the vocabulary computed them (``FinalLogits``), not a second product
    of the head: those logits equal plain transformers' at each probe's last position, every
    probe's are kept (none left NaN), and nothing computes the head's product for the check."""
    from workflow.lens import session as session_module
    from workflow.lens.run import lens_batches
    from workflow.lens.session import LensSession

    model = loaded[arch]
    kept = {}
    check = LensSession.check_identity

    def recording(self, final, model_logits, names, block=32, lens_logits=None):
        assert lens_logits is not None, "the identity check was not handed the lens's own logits"
        kept.update(zip(names, lens_logits.clone()))
        return check(self, final, model_logits, names, block, lens_logits)

    def no_product(*args, **kwargs):
        raise AssertionError("the identity check computed the head's product again")

    monkeypatch.setattr(LensSession, "check_identity", recording)
    monkeypatch.setattr(session_module, "rows_padded", no_product)
    chosen = probes[:3]
    session = LensSession(model, LensSettings(top_k=3, positions=positions))
    assert sum(len(batch.readings) for batch in lens_batches(session, chosen, batch_size=2)) == len(chosen)
    assert len(kept) == len(chosen)
    for probe in chosen:
        _, hf_logits, _ = reference_layers(tiny_dirs[arch], probe["prompt"])
        got = kept[f"probe {probe['id']!r}"]
        assert bool(torch.isfinite(got).all())
        assert (got - hf_logits[-1]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_lens_uses_the_norm_module_itself(arch, loaded):
    """Perturbing the model's final norm weight must change what the lens reads."""
    model = copy.deepcopy(loaded[arch])
    ids = model.tokenizer("The capital of Germany is")["input_ids"]
    residuals, _ = model.backend.capture(ids, "all")
    middle = residuals[1]
    before = lens_heads(model, LensSettings()).lens.logits(middle)
    norm = model.backend.hf_model.model.norm
    with torch.no_grad():
        norm.weight.mul_(torch.linspace(0.1, 3.0, norm.weight.numel()))
    after = lens_heads(model, LensSettings()).lens.logits(middle)
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
    rows = read_probes(model, probes[:1], LensSettings(use_norm_lens=False, positions="last")).rows
    ids = model.tokenizer(probes[0]["prompt"])["input_ids"]
    residuals, _ = model.backend.capture(ids, "last")
    with torch.no_grad():
        raw = model.backend.hf_model.lm_head(residuals[1, 0]).softmax(-1)
    row = [r for r in rows if r["layer"] == 1][0]
    assert row["top1_prob"] == pytest.approx(raw.max().item(), abs=1e-5)


def test_positions_last_records_only_the_last_position(loaded, probes):
    model = loaded["gemma3"]
    read = read_probes(model, probes, LensSettings(positions="last"))
    rows = read.rows
    for probe in read.probes:
        mine = [r for r in rows if r["probe"] == probe["id"]]
        assert {r["position"] for r in mine} == {len(probe["input_ids"]) - 1}
        assert sorted(r["layer"] for r in mine) == list(range(model.n_layers + 1))


def test_block_rows_follows_the_budget():
    from workflow.lens.readout import block_rows

    assert block_rows(262144, 192) == 32  # 1 MiB per float32 row, six such tensors alive
    assert block_rows(262144, 1) == 1
    assert block_rows(320, 256) > 10_000


def test_streamed_and_whole_row_records_agree(kernel, loaded, probes, monkeypatch):
    """Streaming the vocabulary (one pass) and decoding whole rows one at a time agree to float rounding."""
    from workflow.lens import readout as lens
    from workflow.model.head import LensHead

    model = loaded["gemma3"]
    streamed, original = [], lens.stream_statistics

    def spy(*args, **kwargs):
        streamed.append(True)
        yield from original(*args, **kwargs)

    monkeypatch.setattr(lens, "stream_statistics", spy)
    whole = read_probes(model, probes, LensSettings()).rows
    assert len(streamed) == len(probes)  # the bridge's unembedding is the model's nn.Linear
    monkeypatch.setattr(LensHead, "linear", lambda self: None)  # no linear view: whole rows
    monkeypatch.setattr(lens, "block_rows", lambda vocab, mb: 1)
    blocked = read_probes(model, probes, LensSettings()).rows
    assert len(streamed) == len(probes)
    assert len(whole) == len(blocked)
    for a, b in zip(whole, blocked):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], (float, list)) and key != "topk_tokens":
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
            else:
                assert a[key] == b[key], key


def test_empty_prompt_is_refused(loaded):
    with pytest.raises(UserError, match="prompt is empty"):
        read_probes(loaded["llama"], [{"id": "blank", "prompt": "   ", "answer": " x"}], LensSettings())


def test_identity_check_fails_loudly_when_the_lens_misses_a_step(loaded, probes, monkeypatch):
    """A lens that forgot soft-capping must stop the run instead of writing records."""
    model = loaded["gemma3"]
    from workflow.lens import session as lens_setup

    monkeypatch.setattr(lens_setup, "logit_postprocessor", lambda config: (lambda logits: logits))
    with pytest.raises(LensIdentityError, match="does not reproduce the model's own output"):
        read_probes(model, probes[:1], LensSettings())


@pytest.mark.parametrize("arch", ARCHS)
def test_each_lens_forward_gives_the_distribution_its_records_describe(arch, loaded, tiny_dirs, probes):
    """A lens is ``forward(hidden, layer)`` -> logits (as tuned-lens has them). The logit
    lens's equal plain transformers' final norm and lm_head at every layer; the tuned lens's
    are the translator then the same head; and the streamed records of both lenses are the
    softmax of those logits."""
    from tiny import random_translators
    from workflow.lens.session import LensSession, LogitLens, TunedLensReader

    model = loaded[arch]
    translator = random_translators(model, seed=1)
    settings = LensSettings(top_k=3)
    session = LensSession(model, settings, translator)
    logit, tuned = session.lenses
    assert isinstance(logit, LogitLens) and isinstance(tuned, TunedLensReader)
    assert (logit.name, tuned.name) == ("logit", "tuned")
    layers, _, ids = reference_layers(tiny_dirs[arch], probes[0]["prompt"])
    residuals, _ = model.backend.capture(ids, "all")
    with torch.no_grad():
        for layer in range(model.n_layers + 1):
            assert (logit(residuals[layer], layer) - layers[layer]).abs().max().item() <= 1e-4
            expected = session.heads.lens.logits(residuals[layer] + residuals[layer] @ translator.weight[layer].T + translator.bias[layer]) \
                if layer < model.n_layers else layers[layer]
            assert (tuned(residuals[layer], layer) - expected).abs().max().item() <= 1e-4
        read = read_probes(model, probes[:1], settings, translator)
        rows, answer = read.rows, read.probes[0]["answer_token_id"]
        assert {r["lens"] for r in rows} == {"logit", "tuned"}
        for row in rows:
            lens = logit if row["lens"] == "logit" else tuned
            p = lens(residuals[row["layer"], row["position"]][None], row["layer"])[0].double().softmax(-1)
            assert row["top1_prob"] == pytest.approx(p.max().item(), abs=1e-5)
            assert row["answer_prob"] == pytest.approx(p[answer].item(), abs=1e-5)

"""Lens statistics against a plain NumPy computation."""

import numpy as np
import pytest
import torch

from workflow.model.head import LensHead
from workflow.lens.readout import layer_metrics
from workflow.model.logit_steps import logit_postprocessor


def numpy_metrics(logits, final_logits, answer):
    z = logits.astype(np.float64)
    lp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    p = np.exp(lp)
    fz = final_logits.astype(np.float64)
    flp = fz - np.log(np.exp(fz - fz.max(-1, keepdims=True)).sum(-1, keepdims=True)) - fz.max(-1, keepdims=True)
    entropy = -(p * lp).sum(-1)
    kl = (np.exp(flp) * (flp - lp)).sum(-1)
    rank = (lp > lp[:, [answer]]).sum(-1) + 1  # log-probs: probabilities underflow to ties
    return p, entropy, kl, rank


def test_layer_metrics_match_numpy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 50, generator=gen) * 3
    final = torch.randn(7, 50, generator=gen) * 3
    answer = 11
    stats = layer_metrics(logits, final.log_softmax(-1), answer, top_k=4)
    p, entropy, kl, rank = numpy_metrics(logits.numpy(), final.numpy(), answer)
    order = np.argsort(-p, axis=-1)[:, :4]
    assert stats.topk_ids.tolist() == order.tolist()
    assert np.allclose(stats.topk_probs.numpy(), np.take_along_axis(p, order, -1), atol=1e-6)
    assert np.allclose(stats.entropy.numpy(), entropy, atol=1e-5)
    assert np.allclose(stats.kl_to_final.numpy(), kl, atol=1e-5)
    assert np.allclose(stats.answer_prob.numpy(), p[:, answer], atol=1e-7)
    assert stats.answer_rank.tolist() == rank.tolist()


def test_kl_is_zero_against_itself():
    logits = torch.randn(3, 20)
    stats = layer_metrics(logits, logits.log_softmax(-1), 0, top_k=1)
    assert stats.kl_to_final.abs().max().item() < 1e-6


class Config:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.parametrize(
    "config, expected",
    [
        (Config(final_logit_softcapping=None), lambda z: z),
        (Config(final_logit_softcapping=30.0), lambda z: torch.tanh(z / 30.0) * 30.0),
        (Config(logit_scale=0.0625), lambda z: z * 0.0625),
        (Config(model_type="granite", logits_scaling=8.0), lambda z: z / 8.0),
        (Config(model_type="hyperclovax", logits_scaling=8.0), lambda z: z * 8.0),
        (Config(model_type="falcon_h1", lm_head_multiplier=0.35), lambda z: z * 0.35),
        (Config(logits_soft_cap=1.0), lambda z: torch.tanh(z)),
        (Config(text_config=Config(final_logit_softcapping=5.0)), lambda z: torch.tanh(z / 5.0) * 5.0),
    ],
)
def test_post_unembedding_steps_follow_the_config(config, expected):
    z = torch.linspace(-100, 100, 11)
    assert torch.allclose(logit_postprocessor(config)(z), expected(z))


def streamed_and_numpy(monkeypatch, weight, residuals, answer, postprocess=None, plan=(2, 97), top_k=4):
    """Statistics streamed over small vocabulary blocks, and the NumPy computation on whole rows."""
    from workflow.lens import readout as lens

    postprocess = postprocess or logit_postprocessor(Config())  # the identity: the linear path
    monkeypatch.setattr(lens, "stream_plan", lambda *args: plan)
    n_layers1, n_pos, d = residuals.shape
    unembed = torch.nn.Linear(d, weight.shape[0], bias=False)
    unembed.weight.data = weight
    norm = torch.nn.LayerNorm(d)
    head = LensHead(norm, unembed, postprocess, torch.float32)
    rows = list(lens.lens_statistics(residuals, head, head, answer, top_k, weight.shape[0], 1))
    with torch.no_grad():
        logits = postprocess(unembed(norm(residuals))).numpy()
    return rows, logits


def check_against_numpy(rows, logits, answer, top_k=4):
    assert len(rows) == logits.shape[0] * logits.shape[1]
    for row in rows:
        z = logits[row.layer, row.position][None]
        p, entropy, kl, rank = numpy_metrics(z, logits[-1, row.position][None], answer)
        order = np.argsort(-z[0])[:top_k]  # by logit: probabilities can underflow to ties
        assert row.topk_ids == order.tolist()
        assert np.allclose(row.topk_probs, p[0, order], atol=1e-6)
        # float32: a logit is known to a few ulps of its size, and the streamed blocks are
        # computed in other shapes than the reference's whole rows (other kernels, other
        # bits): with logits of hundreds of nats that is 1e-5 to 1e-4 nats, not 2e-5.
        noise = max(2e-5, 4 * float(np.finfo(np.float32).eps) * float(max(np.abs(z).max(), np.abs(logits[-1, row.position]).max())))
        assert row.entropy == pytest.approx(entropy[0], rel=1e-6, abs=noise)
        assert row.kl_to_final == pytest.approx(max(kl[0], 0.0), rel=1e-6, abs=noise)
        assert row.answer_prob == pytest.approx(p[0, answer], abs=1e-7)
        assert row.answer_rank == rank[0]


IDENTITIES = {"through-weights": None, "elementwise": lambda z: z}


@pytest.mark.parametrize("postprocess", IDENTITIES.values(), ids=IDENTITIES.keys())
def test_streamed_vocabulary_blocks_match_whole_rows(kernel, monkeypatch, postprocess):
    """Many vocabulary blocks, the answer's block out of order, several position blocks."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(1000, 16, generator=gen)
    residuals = torch.randn(4, 5, 16, generator=gen) * 2
    for answer in (3, 517, 999):
        rows, logits = streamed_and_numpy(monkeypatch, weight, residuals, answer, postprocess)
        check_against_numpy(rows, logits, answer)


@pytest.mark.parametrize("postprocess", IDENTITIES.values(), ids=IDENTITIES.keys())
@pytest.mark.parametrize("sign", [1, -1], ids=["rows-move", "final-rows-move"])
def test_streaming_survives_logits_far_above_the_first_block(kernel, monkeypatch, sign, postprocess):
    """A later block with logits hundreds of nats above the first: the reference moves, nothing overflows."""
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(1000, 16, generator=gen)
    direction = torch.randn(16, generator=gen)
    direction -= direction.mean()
    weight[700:720] = 60 * direction / direction.norm() + 0.1 * torch.randn(20, 16, generator=gen)
    residuals = torch.randn(4, 5, 16, generator=gen)
    # One of layer 1 and the last layer points along that direction (logits of a few
    # hundred nats in block 700), the other against it: only its rows move their reference.
    residuals[1] += sign * 3 * direction
    residuals[-1] -= sign * 3 * direction
    rows, logits = streamed_and_numpy(monkeypatch, weight, residuals, 5, postprocess)
    high, low = (1, -1) if sign == 1 else (-1, 1)
    assert logits[high, :, 700:720].min() > 150 and logits[low, :, 700:720].max() < 0
    assert all(np.isfinite([r.entropy, r.kl_to_final, r.answer_prob]).all() for r in rows)
    check_against_numpy(rows, logits, answer=5)


def test_streaming_applies_soft_capping_per_block(kernel, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(600, 16, generator=gen) * 5
    residuals = torch.randn(3, 4, 16, generator=gen)
    cap = logit_postprocessor(Config(final_logit_softcapping=10.0))
    rows, logits = streamed_and_numpy(monkeypatch, weight, residuals, answer=42, postprocess=cap)
    assert np.abs(logits).max() <= 10.0
    check_against_numpy(rows, logits, answer=42)


@pytest.mark.parametrize("postprocess", IDENTITIES.values(), ids=IDENTITIES.keys())
def test_streaming_with_a_separate_reference_head(kernel, monkeypatch, postprocess):
    """Without the norm lens, rows are decoded raw and the final distribution through the norm."""
    from workflow.lens import readout as lens

    monkeypatch.setattr(lens, "stream_plan", lambda *args: (3, 128))
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(700, 16, generator=gen)
    weight[300:310] *= 40
    residuals = torch.randn(4, 5, 16, generator=gen) * 3
    unembed = torch.nn.Linear(16, 700, bias=True)
    unembed.weight.data, unembed.bias.data = weight, torch.randn(700, generator=gen)
    norm = torch.nn.LayerNorm(16)
    postprocess = postprocess or logit_postprocessor(Config())
    reference = LensHead(norm, unembed, postprocess, torch.float32)
    raw_head = LensHead(None, unembed, postprocess, torch.float32)
    rows = list(lens.lens_statistics(residuals, raw_head, reference, 9, 4, 700, 1))
    with torch.no_grad():
        logits = unembed(residuals).numpy()
        final = unembed(norm(residuals[-1])).numpy()
    for row in rows:
        p, entropy, kl, rank = numpy_metrics(logits[row.layer, row.position][None], final[row.position][None], 9)
        assert row.topk_ids == np.argsort(-logits[row.layer, row.position])[:4].tolist()
        assert row.entropy == pytest.approx(entropy[0], rel=1e-6, abs=2e-5)
        assert row.kl_to_final == pytest.approx(max(kl[0], 0.0), rel=1e-6, abs=2e-5)
        assert row.answer_prob == pytest.approx(p[0, 9], abs=1e-7) and row.answer_rank == rank[0]


def test_streaming_with_a_half_precision_head(kernel, monkeypatch):
    """use_fp32_unembed: false on a bfloat16 model: the head's own dtype all the way (this
    once failed on the torch path, mixing float32 sums with a bfloat16 block)."""
    from workflow.lens import readout as lens

    monkeypatch.setattr(lens, "stream_plan", lambda *args: (2, 128))
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(600, 16, generator=gen)
    residuals = (torch.randn(3, 4, 16, generator=gen) * 2).bfloat16()
    unembed = torch.nn.Linear(16, 600, bias=False).bfloat16()
    unembed.weight.data = weight.bfloat16()
    norm = torch.nn.LayerNorm(16).bfloat16()
    head = LensHead(norm, unembed, logit_postprocessor(Config()), torch.bfloat16)
    rows = list(lens.lens_statistics(residuals, head, head, 7, 4, 600, 1))
    with torch.no_grad():
        logits = head.logits(residuals).double().numpy()  # the head's own bfloat16 product, whole rows
    assert len(rows) == 12
    for row in rows:
        p, entropy, kl, rank = numpy_metrics(logits[row.layer, row.position][None], logits[-1, row.position][None], 7)
        # bfloat16 products of a block and of a whole row may round differently: 3 significant bits
        assert row.answer_prob == pytest.approx(p[0, 7], rel=0.05, abs=1e-3)
        assert row.entropy == pytest.approx(entropy[0], rel=0.05, abs=0.02)
        assert row.kl_to_final == pytest.approx(max(kl[0], 0.0), rel=0.05, abs=0.02)


def test_stream_plan_fits_the_cache_on_a_cpu_and_the_budget_elsewhere():
    from workflow.lens.readout import CACHE_CELLS, FLOAT32_BYTES, STREAM_LIVE_TENSORS, stream_plan

    budget_cells = 128 * 2**20 // (FLOAT32_BYTES * STREAM_LIVE_TENSORS)
    for on_cpu, cap in ((True, CACHE_CELLS), (False, budget_cells)):
        positions, width = stream_plan(19, 129, 262144, 128, on_cpu)
        assert positions == 129 and width % 64 == 0
        assert (19 + 1) * positions * width <= cap < (19 + 1) * positions * (width + 64)
    assert stream_plan(19, 129, 262144, 128, False)[1] > 4 * stream_plan(19, 129, 262144, 128, True)[1]

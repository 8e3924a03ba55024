"""Lens statistics against a plain NumPy computation."""

import numpy as np
import pytest
import torch

from workflow.lens import layer_metrics, logit_postprocessor


def numpy_metrics(logits, final_logits, answer):
    z = logits.astype(np.float64)
    lp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    p = np.exp(lp)
    fz = final_logits.astype(np.float64)
    flp = fz - np.log(np.exp(fz - fz.max(-1, keepdims=True)).sum(-1, keepdims=True)) - fz.max(-1, keepdims=True)
    entropy = -(p * lp).sum(-1)
    kl = (np.exp(flp) * (flp - lp)).sum(-1)
    rank = (p > p[:, [answer]]).sum(-1) + 1
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
        (Config(logits_scaling=8.0), lambda z: z / 8.0),
        (Config(text_config=Config(final_logit_softcapping=5.0)), lambda z: torch.tanh(z / 5.0) * 5.0),
    ],
)
def test_post_unembedding_steps_follow_the_config(config, expected):
    z = torch.linspace(-100, 100, 11)
    assert torch.allclose(logit_postprocessor(config)(z), expected(z))

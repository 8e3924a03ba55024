"""Lens math: residual-stream vectors -> per-layer next-token statistics.

Kept free of model loading so it can be tested on any module pair. All statistics
are derived from log-probabilities in one place (``layer_metrics``), and logits are
reduced to those statistics block by block, so memory stays bounded whatever the
prompt length and vocabulary size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

FLOAT32_BYTES = 4
# Full-vocabulary float32 tensors alive at once while reducing one block of rows
# (logits, log-probs, probs, the entropy and KL products and the KL difference, as
# measured with bench/lens_memory.py); sizes the block from the budget.
LIVE_VOCAB_TENSORS = 6


def logit_postprocessor(hf_config) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the architecture does to logits after the unembedding, read from its config.

    Gemma 2/3 soft-cap final logits (tanh(z / c) * c); Cohere multiplies by
    ``logit_scale``; Granite divides by ``logits_scaling``. The lens must apply the
    same step at every layer, not only the last.
    """
    cfg = getattr(hf_config, "text_config", None) or hf_config
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    divide = getattr(cfg, "logits_scaling", None)

    def postprocess(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return postprocess


@dataclass
class LensHead:
    """Decodes residual vectors through the model's own final norm and unembedding.

    ``norm`` and ``unembed`` are the model's modules (or float32 copies of them when
    ``use_fp32_unembed`` is on and the model runs in half precision), never a
    re-implementation of their formulas.
    """

    norm: torch.nn.Module | None
    unembed: torch.nn.Module
    postprocess: Callable[[torch.Tensor], torch.Tensor]
    compute_dtype: torch.dtype

    @classmethod
    def from_modules(
        cls,
        norm: torch.nn.Module,
        unembed: torch.nn.Module,
        postprocess: Callable[[torch.Tensor], torch.Tensor],
        model_dtype: torch.dtype,
        use_norm_lens: bool = True,
        use_fp32_unembed: bool = True,
    ) -> LensHead:
        if use_fp32_unembed and model_dtype != torch.float32:
            # A float32 copy of the same modules: same code path, float32 arithmetic.
            norm = copy.deepcopy(norm).float()
            unembed = copy.deepcopy(unembed).float()
            compute_dtype = torch.float32
        else:
            compute_dtype = model_dtype
        return cls(norm if use_norm_lens else None, unembed, postprocess, compute_dtype)

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for residual vectors ``hidden`` of shape [..., d_model]."""
        h = hidden.to(self.compute_dtype)
        if self.norm is not None:
            h = self.norm(h)
        return self.postprocess(self.unembed(h)).float()


@dataclass
class LayerStats:
    """Statistics of a block of rows (each row one layer at one position)."""

    topk_ids: torch.Tensor  # [..., k]
    topk_probs: torch.Tensor  # [..., k]
    entropy: torch.Tensor  # [...], nats
    answer_prob: torch.Tensor  # [...]
    answer_rank: torch.Tensor  # [...], 1-based
    kl_to_final: torch.Tensor  # [...], KL(final || row), nats


def layer_metrics(
    logits: torch.Tensor, final_logprobs: torch.Tensor, answer_id: int, top_k: int
) -> LayerStats:
    """Reduce float32 logits [..., V] to the recorded statistics.

    ``final_logprobs`` (broadcastable to ``logits``) holds the model's final
    log-probabilities at the same position as each row, for KL to final.
    """
    logprobs = torch.log_softmax(logits, dim=-1)
    probs = logprobs.exp()
    entropy = -(probs * logprobs).sum(-1)
    top_lp, top_ids = logprobs.topk(top_k, dim=-1)
    answer_lp = logprobs[..., answer_id]
    # Rank counts strictly larger log-probs, so ties share the better rank.
    answer_rank = (logprobs > answer_lp[..., None]).sum(-1) + 1
    kl = (final_logprobs.exp() * (final_logprobs - logprobs)).sum(-1).clamp_min(0.0)
    return LayerStats(top_ids, top_lp.exp(), entropy, answer_lp.exp(), answer_rank, kl)


def block_rows(vocab_size: int, working_memory_mb: int) -> int:
    """How many full-vocabulary rows fit the working-memory budget at once."""
    per_row = vocab_size * FLOAT32_BYTES * LIVE_VOCAB_TENSORS
    return max(1, (working_memory_mb * 2**20) // per_row)


@dataclass
class RowStats:
    layer: int
    position: int
    topk_ids: list[int]
    topk_probs: list[float]
    entropy: float
    answer_prob: float
    answer_rank: int
    kl_to_final: float


def lens_statistics(
    residuals: torch.Tensor,
    head: LensHead,
    final_head: LensHead,
    answer_id: int,
    top_k: int,
    vocab_size: int,
    working_memory_mb: int,
    transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> Iterator[RowStats]:
    """Yield statistics for every (layer, position) of ``residuals`` [L+1, T, d].

    ``final_head`` decodes the last layer as the model does (always with its norm),
    giving the reference distribution for KL. ``transform(h, layer)`` is the lens's
    change of basis (identity for the logit lens). Rows come out position-major
    within blocks sized from ``working_memory_mb``.
    """
    n_layers_plus_one, n_pos, d_model = residuals.shape
    rows = block_rows(vocab_size, working_memory_mb)
    pos_block = max(1, min(n_pos, rows // n_layers_plus_one))
    layer_block = max(1, min(n_layers_plus_one, rows // pos_block))
    for p0 in range(0, n_pos, pos_block):
        positions = list(range(p0, min(n_pos, p0 + pos_block)))
        final_lp = torch.log_softmax(final_head.logits(residuals[-1, positions]), dim=-1)
        for l0 in range(0, n_layers_plus_one, layer_block):
            layers = list(range(l0, min(n_layers_plus_one, l0 + layer_block)))
            hidden = residuals[layers][:, positions]  # [nl, np, d]
            if transform is not None:
                hidden = torch.stack([transform(hidden[i], layer) for i, layer in enumerate(layers)])
            logits = head.logits(hidden.reshape(-1, d_model)).reshape(len(layers), len(positions), -1)
            stats = layer_metrics(logits, final_lp[None], answer_id, top_k)
            del logits
            for i, layer in enumerate(layers):
                for j, position in enumerate(positions):
                    yield RowStats(
                        layer=layer,
                        position=position,
                        topk_ids=stats.topk_ids[i, j].tolist(),
                        topk_probs=stats.topk_probs[i, j].tolist(),
                        entropy=float(stats.entropy[i, j]),
                        answer_prob=float(stats.answer_prob[i, j]),
                        answer_rank=int(stats.answer_rank[i, j]),
                        kl_to_final=float(stats.kl_to_final[i, j]),
                    )

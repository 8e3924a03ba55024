"""Direct logit attribution: how much each component of each block writes into the logit of
a token, through the model's own final norm with its scale frozen at the final residual.

The residual stream after the last block is the embedding plus what every block's attention
and MLP added: ``x_L = x_0 + sum_l (attn_l + mlp_l)``. The final norm is linear in its input
once its scale (the 1/rms or 1/std of ``x_L`` itself) is held fixed, so each component's
share of a logit is ``U[t] . norm_frozen(c)``, and the shares plus the norm's bias term and
the unembedding's bias sum to the model's own logit (checked at run time, like experiment
001's identity check: ``Attribution.deviation``). Attention's share is split per head where
the block reads its heads through an output projection: head h writes ``z_h W_O,h``, through
the block's post-attention norm (Gemma) with that norm's scale frozen the same way.

The components are found by data flow, not by a per-architecture table
(``workflow.model.components``: a forward pass traced through the backend's
``ComponentRunner``). Blocks whose attention and MLP read the same residual (GPT-J,
GPT-NeoX, Falcon, Phi) add both outputs to it: the attention's share is its output, the
MLP's the rest of what the block added (checked to be the MLP's output). Norms that are not
a scale times an elementwise weight are refused (checked, not assumed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from workflow.model.components import SAME, Block, Capture, ComponentRunner, NotDecomposable


class FrozenNorm:
    """A norm module with its scale frozen at the input ``x`` [T, d] it saw: the linear map
    ``c -> w * P(c) * s(x)`` (P centres for a LayerNorm, is the identity for an RMSNorm) and
    the constant ``b`` it adds, measured from the module itself and checked to reproduce its
    output on ``x``."""

    def __init__(self, norm: nn.Module, x: torch.Tensor):
        d = x.shape[-1]
        ref = next((p for p in norm.parameters()), x)
        with torch.no_grad():
            run = lambda v: norm(v.to(device=ref.device, dtype=x.dtype)).to(torch.float64)  # noqa: E731
            self.b = run(torch.zeros(1, d))[0]
            self.centres = bool(torch.allclose(run(x + 1.0), run(x), **SAME))
            # Alternating +-1 over an even number n <= d-1 of entries (mean 0, so P leaves it
            # alone), scaled by lambda so that the norm's epsilon does not count: the norm
            # returns w times the signs over sqrt(n/d). Two such vectors, one from each end,
            # cover every entry.
            n = d - 1 - (d - 1) % 2
            weight = torch.empty(d, dtype=torch.float64)
            for idx in (torch.arange(0, n), torch.arange(d - n, d)):
                v = torch.zeros(d, dtype=torch.float64)
                v[idx] = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).to(torch.float64)
                out = (run(1e3 * v[None])[0] - self.b) * v * torch.sqrt((v**2).mean())
                weight[idx] = out[idx]
            self.weight = weight
            projected = self.project(x.to(torch.float64))
            written = self.weight * projected
            observed = run(x) - self.b
            self.scale = (observed * written).sum(-1) / (written * written).sum(-1).clamp_min(1e-300)  # [T]
            error = (written * self.scale[..., None] - observed).abs().max().item()
            if error > 1e-4 * max(1.0, observed.abs().max().item()):
                raise NotDecomposable(
                    f"{type(norm).__name__} is not a scale times an elementwise weight (frozen, it is off by {error:.3g})"
                )

    def project(self, c: torch.Tensor) -> torch.Tensor:
        return c - c.mean(-1, keepdim=True) if self.centres else c

    def linear(self, c: torch.Tensor) -> torch.Tensor:
        """The norm's linear part with the frozen scale, on c [..., T, d] (float64)."""
        return self.weight * self.project(c) * self.scale[..., None]


@dataclass
class Attribution:
    """Direct logit attribution at one position, float64: ``shares[name]`` is a component's
    contribution to each token's logit (the tokens in ``tokens`` order)."""

    tokens: list[int]
    shares: dict[str, torch.Tensor]  # "embedding", "L{l}.attention", "L{l}.mlp", "L{l}.head{h}", "L{l}.attention_bias"
    constant: torch.Tensor  # the final norm's bias and the unembedding's bias, per token
    model_logits: torch.Tensor  # the model's own logits of ``tokens``
    n_heads: int
    # The lens (final norm and unembedding) on the residual between attention and MLP and
    # after the MLP, per layer: the probability of each of ``tokens`` and its rank (1 = top).
    mid_lens: list[tuple[torch.Tensor, torch.Tensor]]
    post_lens: list[tuple[torch.Tensor, torch.Tensor]]
    softcap: float | None = None  # the model's final soft-capping: shares are of the logit before it
    parallel: bool = False  # parallel blocks: ``mid_lens`` reads the block's input plus its attention's write

    def total(self) -> torch.Tensor:
        blocks = [v for k, v in self.shares.items() if k == "embedding" or k.endswith((".attention", ".mlp"))]
        return torch.stack(blocks).sum(0) + self.constant

    def deviation(self) -> float:
        """The largest difference between the shares' sum and the model's own logits."""
        return float((self.total() - self.model_logits).abs().max())

    def head_deviation(self) -> float:
        """The largest difference between a layer's head shares (and its bias) and its attention share."""
        worst = 0.0
        layers = {k.split(".")[0] for k in self.shares if ".head" in k}
        for layer in layers:
            heads = [v for k, v in self.shares.items() if k.startswith(f"{layer}.head") or k == f"{layer}.attention_bias"]
            worst = max(worst, float((torch.stack(heads).sum(0) - self.shares[f"{layer}.attention"]).abs().max()))
        return worst


def attribute(runner: ComponentRunner, final_norm: nn.Module, input_ids: list[int], tokens: list[int],
              position: int = -1) -> Attribution:
    """Each component's share of the logits of ``tokens`` at ``position`` of ``input_ids``."""
    run = runner.trace(input_ids)
    model = runner.hf_model
    softcap = getattr(model.config, "final_logit_softcapping", None)
    unembed = model.get_output_embeddings()
    rows = unembed.weight[tokens].detach().to(torch.float64)  # [k, d]
    bias = unembed.bias[tokens].detach().to(torch.float64) if getattr(unembed, "bias", None) is not None else torch.zeros(len(tokens), dtype=torch.float64)
    final = run.post[-1]
    frozen = FrozenNorm(final_norm, final)
    at = position % final.shape[0]

    def logit_share(c: torch.Tensor) -> torch.Tensor:
        return rows @ frozen.linear(c.to(torch.float64))[at]

    def lens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = unembed(final_norm(x[None]))[0, at].to(torch.float64)
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        chosen = logits[tokens]
        return torch.softmax(logits, -1)[tokens], (logits[None, :] > chosen[:, None]).sum(-1) + 1

    shares = {"embedding": logit_share(run.pre[0])}
    parts = runner.parts
    for layer in range(len(parts)):
        attention = run.mid[layer].to(torch.float64) - run.pre[layer].to(torch.float64)
        mlp = run.post[layer].to(torch.float64) - run.mid[layer].to(torch.float64)
        shares[f"L{layer}.attention"] = logit_share(attention)
        shares[f"L{layer}.mlp"] = logit_share(mlp)
        for name, share in _head_shares(parts[layer], run, layer, logit_share).items():
            shares[f"L{layer}.{name}"] = share
    constant = rows @ frozen.b + bias
    model_logits = run.logits[tokens].to(torch.float64)
    if softcap:  # the shares add up to the logit before the model's soft-capping
        model_logits = softcap * torch.atanh(model_logits / softcap)
    return Attribution(
        tokens=list(tokens), shares=shares, constant=constant, model_logits=model_logits,
        n_heads=sum(1 for name in shares if name.startswith("L0.head")),
        mid_lens=[lens(x) for x in run.mid], post_lens=[lens(x) for x in run.post], softcap=softcap,
        parallel=any(run.parallel),
    )


def _head_shares(block: Block, run: Capture, index: int, logit_share) -> dict[str, torch.Tensor]:
    """Per head: ``z_h W_O,h`` through the post-attention norm (frozen at what the attention
    returned), and the projection's bias; {} where the heads are not read through a linear
    output projection."""
    z = run.z[index]
    if z is None or block.projection is None:
        return {}
    projection, d_head, n_heads = block.projection, block.d_head, block.n_heads
    weight = projection.weight.detach().to(torch.float64)  # [d, H * d_head]
    z = z.to(torch.float64)
    norm = run.post_attention_norm[index]
    frozen = FrozenNorm(norm, run.attention_out[index]) if norm is not None else None
    through = (lambda c: frozen.linear(c)) if frozen else (lambda c: c)  # noqa: E731
    out = {}
    for h in range(n_heads):
        part = slice(h * d_head, (h + 1) * d_head)
        out[f"head{h}"] = logit_share(through(z[:, part] @ weight[:, part].T))
    if projection.bias is not None:
        written = projection.bias.detach().to(torch.float64).expand(z.shape[0], -1)
        out["attention_bias"] = logit_share(through(written))
    elif frozen is not None and frozen.b.abs().max() > 0:
        out["attention_bias"] = logit_share(frozen.b.expand(z.shape[0], -1))
    return out

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

Everything is found by data flow on a Hugging Face model, not by a per-architecture table:
a block's components are what its residual gains between its input, the input of the norm
that feeds its MLP (the residual between attention and MLP), and its output; a post-norm is
the child module that turns a component's output into what the residual gained. Blocks
whose attention and MLP read the same residual (GPT-J, GPT-NeoX, Falcon, Phi) add both
outputs to it: the attention's share is its output, the MLP's the rest of what the block
added (checked to be the MLP's output). Norms that are not a scale times an elementwise
weight are refused (checked, not assumed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
# An MLP written as two linear children of the layer rather than one module (OPT): the first
# reads what the MLP reads, the second writes what it adds.
MLP_LINEARS = (("fc1", "fc2"),)
OUT_PROJECTION_NAMES = ("o_proj", "out_proj", "dense", "c_proj")
# How far what a component's module returned may differ from what the residual gained
# before a post-norm is looked for (float32 additions in the model round at about 1e-7).
SAME = dict(rtol=1e-4, atol=1e-5)


class NotDecomposable(ValueError):
    """The model's blocks or norms are not of a form this attribution decomposes."""


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


@dataclass
class Block:
    """One decoder layer's parts: its attention and MLP modules, and the attention's output
    projection and head width where its heads are read (a linear projection of H x d_head)."""

    attention: nn.Module
    mlp: nn.Module  # the module whose output is what the MLP writes
    projection: nn.Linear | None
    d_head: int | None
    mlp_reads: nn.Module | None = None  # the module whose input is what the MLP reads, where not ``mlp``

    @property
    def mlp_input(self) -> nn.Module:
        return self.mlp_reads if self.mlp_reads is not None else self.mlp

    @property
    def n_heads(self) -> int:
        return self.projection.in_features // self.d_head if self.projection is not None else 0


def blocks(layers: nn.ModuleList) -> list[Block]:
    out = []
    for layer in layers:
        attention, mlp = _child(layer, ATTENTION_NAMES), _child(layer, MLP_NAMES)
        reads = None
        if mlp is None:
            for first, second in MLP_LINEARS:
                if isinstance(getattr(layer, first, None), nn.Module) and isinstance(getattr(layer, second, None), nn.Module):
                    reads, mlp = getattr(layer, first), getattr(layer, second)
                    break
        if attention is None or mlp is None:
            raise NotDecomposable(f"{type(layer).__name__}: no attention ({'/'.join(ATTENTION_NAMES)}) or MLP "
                                  f"({'/'.join(MLP_NAMES)}) module found")
        projection = _child(attention, OUT_PROJECTION_NAMES)
        d_head = getattr(attention, "head_dim", None) or getattr(attention, "head_size", None)
        if not isinstance(projection, nn.Linear) or not d_head or projection.in_features % d_head:
            projection, d_head = None, None
        out.append(Block(attention, mlp, projection, d_head, reads))
    return out


def _tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def by_position(value, rows: int, positions: int) -> torch.Tensor:
    """A module's output as [rows, positions, width], a view of it (writing into it writes the
    output): most modules return that shape, a mixture of experts (Llama 4) its tokens
    flattened to [rows * positions, width]."""
    return _tensor(value).view(rows, positions, -1)


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
class Capture:
    """One forward pass's residual stream around every block, float32 as the model made it."""

    pre: list[torch.Tensor] = field(default_factory=list)  # [L] each [T, d]: entering block l
    mid: list[torch.Tensor] = field(default_factory=list)  # between its attention and its MLP
    post: list[torch.Tensor] = field(default_factory=list)  # leaving it
    attention_out: list[torch.Tensor] = field(default_factory=list)  # what its attention module returned
    mlp_out: list[torch.Tensor] = field(default_factory=list)
    z: list[torch.Tensor | None] = field(default_factory=list)  # the heads' outputs entering W_O
    post_attention_norm: list[nn.Module | None] = field(default_factory=list)
    post_mlp_norm: list[nn.Module | None] = field(default_factory=list)
    parallel: list[bool] = field(default_factory=list)  # attention and MLP read the same residual
    logits: torch.Tensor | None = None  # the model's own, at the last position [V]


def capture(model: nn.Module, layers: nn.ModuleList, input_ids: list[int]) -> Capture:
    """Run ``model`` once on ``input_ids`` and find every block's components by data flow."""
    # Kept as one function: one recorded forward pass, its hooks and what they saw.
    seen: dict[tuple[int, str], object] = {}
    children: dict[int, list[tuple[nn.Module, torch.Tensor, torch.Tensor]]] = {}
    handles = []
    for index, (layer, block) in enumerate(zip(layers, blocks(layers))):
        attention, mlp = block.attention, block.mlp

        def pre(module, args, kwargs, index=index):
            hidden = args[0] if args else kwargs.get("hidden_states")
            seen[(index, "pre")] = hidden.detach()[0]

        def post(module, args, output, index=index):
            seen[(index, "post")] = _tensor(output).detach()[0]

        def attention_out(module, args, output, index=index):
            seen[(index, "attention")] = by_position(output, 1, len(input_ids)).detach()[0]

        def mlp_in(module, args, index=index):
            seen[(index, "mlp_in")] = by_position(args[0], 1, len(input_ids)).detach()[0]

        def mlp_out(module, args, output, index=index):
            seen[(index, "mlp")] = by_position(output, 1, len(input_ids)).detach()[0]

        def z_in(module, args, index=index):
            seen[(index, "z")] = args[0].detach()[0]

        handles += [layer.register_forward_pre_hook(pre, with_kwargs=True), layer.register_forward_hook(post),
                    attention.register_forward_hook(attention_out), block.mlp_input.register_forward_pre_hook(mlp_in),
                    mlp.register_forward_hook(mlp_out)]
        if block.projection is not None:
            handles.append(block.projection.register_forward_pre_hook(z_in))
        for child in layer.children():
            if child is attention or child is mlp or child is block.mlp_input:
                continue

            def record(module, args, output, index=index):
                if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                    try:  # read by position (OPT runs its MLP's norm on the tokens flattened)
                        given, made = by_position(args[0], 1, len(input_ids)), by_position(output, 1, len(input_ids))
                    except RuntimeError:  # not one row per position: no norm of the residual
                        return
                    children.setdefault(index, []).append((module, given.detach()[0], made.detach()[0]))

            handles.append(child.register_forward_hook(record))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            out = model(torch.tensor([input_ids], device=device))
    finally:
        for handle in handles:
            handle.remove()
    result = Capture(logits=out.logits[0, -1].detach())
    for index, layer in enumerate(layers):
        pre, post = seen[(index, "pre")], seen[(index, "post")]
        mlp_input = seen[(index, "mlp_in")]
        feeding = [(m, i) for m, i, o in children.get(index, []) if o.shape == mlp_input.shape and torch.equal(o, mlp_input)]
        mid = feeding[0][1] if feeding else mlp_input
        parallel = bool(torch.equal(mid, pre))
        if parallel:
            # Attention and MLP read the same residual (GPT-J, GPT-NeoX, Falcon, Phi): the block
            # adds both outputs to it. The point "after attention" is then the residual plus
            # the attention's write, and what the MLP writes is checked to be the rest.
            mid = pre + seen[(index, "attention")]
        result.parallel.append(parallel)
        result.pre.append(pre)
        result.mid.append(mid)
        result.post.append(post)
        result.attention_out.append(seen[(index, "attention")])
        result.mlp_out.append(seen[(index, "mlp")])
        result.z.append(seen.get((index, "z")))
        # What the residual gained is a difference of float32 residuals: it is known to a few
        # units in the last place of the residual's largest entries, not of the gain's own.
        ulp = 8 * torch.finfo(post.dtype).eps * float(torch.stack([pre.abs().max(), mid.abs().max(), post.abs().max()]).max())
        result.post_attention_norm.append(_post_norm(children.get(index, []), seen[(index, "attention")], mid - pre, ulp))
        result.post_mlp_norm.append(_post_norm(children.get(index, []), seen[(index, "mlp")], post - mid, ulp))
    return result


def _post_norm(children, output: torch.Tensor, gained: torch.Tensor, ulp: float) -> nn.Module | None:
    """None where the residual gained what the module returned; else the child module that
    turns the one into the other (a post-norm). ``ulp``: how exactly the gain is known."""
    same = dict(rtol=SAME["rtol"], atol=max(SAME["atol"], ulp))
    if torch.allclose(output, gained, **same):
        return None
    for module, given, made in children:
        if given.shape == output.shape and torch.equal(given, output) and torch.allclose(made, gained, **same):
            return module
    raise NotDecomposable("what a block's component returned is not what its residual gained, and no module between explains it")


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


def attribute(model: nn.Module, layers: nn.ModuleList, final_norm: nn.Module, input_ids: list[int], tokens: list[int],
              position: int = -1) -> Attribution:
    """Each component's share of the logits of ``tokens`` at ``position`` of ``input_ids``."""
    run = capture(model, layers, input_ids)
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
    parts = blocks(layers)
    for layer in range(len(layers)):
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

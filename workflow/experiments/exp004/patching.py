"""Component patching and attribution patching (experiment 004).

A *site* is one component of one block at one position: the attention module's output, the
MLP module's output, or one head's output (its slice of what enters the attention's output
projection, ``z_h``). Patching a site writes the clean run's value there into the corrupted
run; its effect is the recovered fraction of the logit difference (clean answer minus
corrupted answer at the last position), ``(LD_patched - LD_corrupted) / (LD_clean -
LD_corrupted)``, as in experiment 002.

``exact`` runs one patched forward per site, many sites to a batch (each row of the batch
patched at its own site). ``attribution`` is attribution patching (AtP, Nanda 2023; Kramár
et al. 2024): one forward and one backward pass on the corrupted prompt give the gradient of
the logit difference at every site, and ``(clean - corrupted) . gradient`` is the linear
estimate of every site's effect at once. AtP*'s correction for attention saturation concerns
patching queries and keys, which this experiment does not patch; its GradDrop (the estimate
again with each layer's gradient dropped, to expose effects that cancel) is ``grad_drop``.

Every forward pass goes through the backend's ``ComponentRunner`` (``workflow.model.components``),
which reads and writes the components; nothing here registers a hook of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workflow.model.components import Block, ComponentRunner, by_position, first_tensor


@dataclass(frozen=True)
class Component:
    layer: int
    kind: str  # "attention", "mlp" or "head"
    head: int | None = None

    @property
    def name(self) -> str:
        return f"L{self.layer}.{self.kind if self.head is None else f'head{self.head}'}"


def components(parts: list[Block]) -> list[Component]:
    """Every block's attention and MLP, and its heads where they are read."""
    out = []
    for layer, block in enumerate(parts):
        out += [Component(layer, "attention"), Component(layer, "mlp")]
        out += [Component(layer, "head", h) for h in range(block.n_heads)]
    return out


@dataclass
class Activations:
    """A run's component outputs [T, ...] per layer, and its logit difference."""

    attention: list[torch.Tensor]
    mlp: list[torch.Tensor]
    z: list[torch.Tensor | None]
    logit_diff: float


def activations(runner: ComponentRunner, input_ids: list[int], answers: tuple[int, int]) -> Activations:
    n = len(runner.parts)
    found = Activations([None] * n, [None] * n, [None] * n, math.nan)

    def attention(layer, out):
        found.attention[layer] = by_position(out, 1, len(input_ids)).detach()[0]

    def mlp(layer, out):
        found.mlp[layer] = by_position(out, 1, len(input_ids)).detach()[0]

    def z(layer, args):
        found.z[layer] = args[0].detach()[0]

    with torch.no_grad():
        found.logit_diff = float(runner.logit_difference(torch.tensor([input_ids], device=runner.device), answers, attention, mlp, z)[0])
    return found


def _recovered(diff: torch.Tensor, clean: float, corrupted: float) -> torch.Tensor:
    return (diff.to(torch.float64) - corrupted) / (clean - corrupted)


# more than 6 parameters: the forward's inputs for both prompts, plus the batching settings
def exact(runner: ComponentRunner, clean_ids: list[int], corrupted_ids: list[int], answers: tuple[int, int],
          batch_size: int = 32, skip_unchanged: bool = True,
          runs: tuple[Activations, Activations] | None = None) -> dict[str, torch.Tensor]:
    """Each component's recovered fraction at each position [T], one patched forward per
    site. ``answers``: (clean answer, corrupted answer) token ids. ``skip_unchanged``: no
    forward for the sites where both runs write the same or nothing reads the write (their
    effect is exactly 0); False patches every site, as TransformerLens's patching functions do (a baseline).
    ``runs``: the clean and corrupted prompts' ``activations`` where the caller has them."""
    if len(clean_ids) != len(corrupted_ids):
        raise ValueError(f"the prompts have {len(clean_ids)} and {len(corrupted_ids)} tokens: patching needs the same length")
    parts = runner.parts
    clean, corrupted = runs or (activations(runner, clean_ids, answers), activations(runner, corrupted_ids, answers))
    every = [(c, p) for c in components(parts) for p in range(len(clean_ids))]
    last_layer, last = len(parts) - 1, len(clean_ids) - 1
    # Sites whose patch cannot change the last position's logits: the effect is exactly 0
    # and no forward pass is needed. Where the two runs' component outputs are equal (every
    # position before the first token the prompts differ in, by causality), and what the last
    # block writes before the last position (no later block reads it). A forward there gives
    # 0 or float noise of 1e-8 depending on the CPU's kernels: skipped, every machine records
    # the same sites as 0 and AtP's agreement compares the same sites.
    sites = [(c, p) for c, p in every
             if not (skip_unchanged and ((c.layer == last_layer and p != last)
                                         or torch.equal(_value(clean, c, p, parts), _value(corrupted, c, p, parts))))]
    effect = torch.empty(len(sites), dtype=torch.float64)
    for start in range(0, len(sites), batch_size):
        chunk = sites[start:start + batch_size]
        rows = max(len(chunk), 2)  # a lone row runs beside a copy: its numbers are a batch's

        # Which rows of the batch are patched where: (layer, kind) -> [(row, component, position)].
        where: dict[tuple[int, str], list[tuple[int, Component, int]]] = {}
        for row, (c, p) in enumerate(chunk):
            where.setdefault((c.layer, c.kind), []).append((row, c, p))

        def on_attention(layer, out):
            for row, _, p in where.get((layer, "attention"), ()):
                by_position(out, rows, len(clean_ids))[row, p] = clean.attention[layer][p]

        def on_mlp(layer, out):
            for row, _, p in where.get((layer, "mlp"), ()):
                by_position(out, rows, len(clean_ids))[row, p] = clean.mlp[layer][p]

        def on_z(layer, args):
            width = parts[layer].d_head
            for row, c, p in where.get((layer, "head"), ()):
                part = slice(c.head * width, (c.head + 1) * width)
                args[0][row, p, part] = clean.z[layer][p, part]

        ids = torch.tensor([corrupted_ids] * rows, device=runner.device)
        with torch.no_grad():
            diff = runner.logit_difference(ids, answers, on_attention, on_mlp, on_z)
        effect[start:start + len(chunk)] = _recovered(diff[: len(chunk)], clean.logit_diff, corrupted.logit_diff)
    out = {c.name: torch.zeros(len(clean_ids), dtype=torch.float64) for c in components(parts)}
    for (c, p), value in zip(sites, effect):
        out[c.name][p] = value
    return out


def _value(run: Activations, c: Component, position: int, parts: list[Block]) -> torch.Tensor:
    """What a run's component wrote at one position (a head: its slice of z)."""
    if c.kind == "head":
        width = parts[c.layer].d_head
        return run.z[c.layer][position, c.head * width:(c.head + 1) * width]
    return (run.attention if c.kind == "attention" else run.mlp)[c.layer][position]


# more than 6 parameters: the forward's inputs for both prompts, plus GradDrop's switch and the clean run
def attribution(runner: ComponentRunner, clean_ids: list[int], corrupted_ids: list[int],
                answers: tuple[int, int], grad_drop: bool = False, clean: Activations | None = None) -> dict[str, torch.Tensor]:
    """AtP's linear estimate of every component's recovered fraction at each position [T]:
    one forward and one backward pass on the corrupted prompt. With ``grad_drop``, AtP*'s
    GradDrop instead: for each layer, the estimate with the gradient through that block's
    writes to the residual stopped; a site's value is the mean of their magnitudes (a size,
    not a sign: it finds effects that cancel in the plain estimate). ``clean``: the clean
    prompt's ``activations`` where the caller has them."""
    parts = runner.parts
    clean = clean or activations(runner, clean_ids, answers)
    drops = [None] if not grad_drop else list(range(len(parts)))
    estimates = []
    for dropped in drops:
        # The pass's own forward gives the corrupted run's logit difference (stopping a
        # gradient changes no value).
        linear, corrupted_diff = _linear_estimate(runner, clean, corrupted_ids, answers, dropped)
        denominator = clean.logit_diff - corrupted_diff
        estimates.append({name: value / denominator for name, value in linear.items()})
    names = [c.name for c in components(parts)]
    if grad_drop:
        stacked = torch.stack([torch.stack([e[n] for n in names]) for e in estimates])  # [drops, components, T]
        value = stacked.abs().sum(0) / max(len(drops) - 1, 1)
        return {n: value[i] for i, n in enumerate(names)}
    return estimates[0]


def _linear_estimate(runner: ComponentRunner, clean: Activations, corrupted_ids: list[int], answers: tuple[int, int],
                     dropped: int | None) -> tuple[dict[str, torch.Tensor], float]:
    """(each site's (clean - corrupted) . gradient of the logit difference, the corrupted
    run's logit difference)."""
    kept: dict[tuple[str, int], torch.Tensor] = {}

    def keep(key, tensor):
        tensor.retain_grad()
        kept[key] = tensor

    # The outputs themselves are kept (their gradients fill only where the model uses them),
    # and read by position after the backward pass.
    def on_attention(layer, out):
        keep(("attention", layer), first_tensor(out))

    def on_mlp(layer, out):
        keep(("mlp", layer), first_tensor(out))

    def on_z(layer, args):
        keep(("z", layer), args[0])

    parts = runner.parts
    with runner.gradients(stopped=dropped):
        diff = runner.logit_difference(torch.tensor([corrupted_ids], device=runner.device), answers, on_attention, on_mlp, on_z)
        diff[0].backward()
    out = {}
    for c in components(parts):
        if c.kind == "head":
            tensor = kept[("z", c.layer)]
            part = slice(c.head * parts[c.layer].d_head, (c.head + 1) * parts[c.layer].d_head)
            delta = clean.z[c.layer][:, part] - tensor.detach()[0][:, part]
            grad = tensor.grad[0][:, part] if tensor.grad is not None else torch.zeros_like(delta)
        else:
            tensor = kept[(c.kind, c.layer)]
            positions = len(corrupted_ids)
            delta = (clean.attention if c.kind == "attention" else clean.mlp)[c.layer] - by_position(tensor.detach(), 1, positions)[0]
            grad = by_position(tensor.grad, 1, positions)[0] if tensor.grad is not None else torch.zeros_like(delta)
        out[c.name] = (delta.to(torch.float64) * grad.to(torch.float64)).sum(-1)
    return out, float(diff[0].detach())


def agreement(exact_effects: dict[str, torch.Tensor], estimates: dict[str, torch.Tensor], k: int = 10) -> dict[str, float]:
    """How well the estimates rank the sites as exact patching does: Spearman's rank
    correlation over the sites patching can change (those where both are exactly 0, the two
    runs writing the same there or nothing reading the write, are left out: agreeing on them
    is no evidence), and the
    overlap of the k sites of largest |effect|."""
    names = sorted(exact_effects)
    a = torch.cat([exact_effects[n] for n in names])
    b = torch.cat([estimates[n] for n in names])
    keep = ~(torch.isnan(a) | torch.isnan(b) | ((a == 0) & (b == 0)))
    a, b = a[keep], b[keep]

    def ranks(x):
        order = torch.argsort(x, stable=True)
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=x.dtype)
        # ties share their mean rank
        for value in torch.unique(x):
            tied = x == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    spearman = float((ra * rb).sum() / torch.sqrt((ra * ra).sum() * (rb * rb).sum()))
    top_a = set(torch.argsort(a.abs(), descending=True)[:k].tolist())
    top_b = set(torch.argsort(b.abs(), descending=True)[:k].tolist())
    return {"spearman": spearman, f"top{k}_overlap": len(top_a & top_b) / k, "sites": int(len(a))}

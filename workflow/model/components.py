"""A decoder block's components, and the one mechanism that reads and writes them in a
forward pass (``ComponentRunner``, a backend's ``components()``, beside its ``capture`` and its
``blocks()`` for the residual stream).

A *component* is what one block's attention module, MLP module, or one head (its slice of
what enters the attention's output projection, ``z_h``) writes. They are found by data flow
on a Hugging Face model, not by a per-architecture table: a block's components are what its
residual gains between its input, the input of the norm that feeds its MLP (the residual
between attention and MLP), and its output; a post-norm is the child module that turns a
component's output into what the residual gained (``ComponentRunner.trace``). Blocks whose
attention and MLP read the same residual (GPT-J, GPT-NeoX, Falcon, Phi) add both outputs to
it. Experiment 004's patching and attribution read and write components only through here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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


def first_tensor(value):
    """A module's output tensor (the first of a tuple)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def by_position(value, rows: int, positions: int) -> torch.Tensor:
    """A module's output as [rows, positions, width], a view of it (writing into it writes the
    output): most modules return that shape, a mixture of experts (Llama 4) its tokens
    flattened to [rows * positions, width]."""
    return first_tensor(value).view(rows, positions, -1)


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


def _trace(model: nn.Module, layers: nn.ModuleList, input_ids: list[int]) -> Capture:
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
            seen[(index, "post")] = first_tensor(output).detach()[0]

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




# A hook on a component: (layer, the module's output) for attention and MLP, (layer, the
# output projection's inputs) for the heads' z.
OnOutput = Callable[[int, object], None]


class ComponentRunner:
    """Forward passes of a transformers model with its components read or written: hooks
    registered for one pass and removed after it. ``parts``: every block's ``Block``."""

    def __init__(self, hf_model: nn.Module, layers: nn.ModuleList):
        self.hf_model, self.layers = hf_model, layers
        self.parts = blocks(layers)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @contextlib.contextmanager
    def hooks(self, on_attention: OnOutput | None = None, on_mlp: OnOutput | None = None,
              on_z: OnOutput | None = None) -> Iterator[None]:
        """Within: every forward pass calls ``on_attention(layer, output)``, ``on_mlp(layer,
        output)`` and ``on_z(layer, args)`` (the output projection's inputs) for every block;
        writing into what they are given writes the pass's values."""
        handles = []
        for layer, block in enumerate(self.parts):
            if on_attention is not None:
                handles.append(block.attention.register_forward_hook(lambda m, a, o, layer=layer: on_attention(layer, o)))
            if on_mlp is not None:
                handles.append(block.mlp.register_forward_hook(lambda m, a, o, layer=layer: on_mlp(layer, o)))
            if on_z is not None and block.projection is not None:
                handles.append(block.projection.register_forward_pre_hook(lambda m, a, layer=layer: on_z(layer, a)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def last_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's logits at the last position of each row of ``ids`` [B, T] -> [B, V]
        (only the last position's are computed where the model allows it: a 262k vocabulary
        makes the others costly)."""
        try:
            return self.hf_model(ids, logits_to_keep=1).logits[:, -1]
        except TypeError:
            return self.hf_model(ids).logits[:, -1]

    # more than 6 parameters: the pass's inputs and its three component hooks, any of them unset
    def logit_difference(self, ids: torch.Tensor, answers: tuple[int, int], on_attention: OnOutput | None = None,
                         on_mlp: OnOutput | None = None, on_z: OnOutput | None = None) -> torch.Tensor:
        """One forward pass of ``ids`` [B, T] with the hooks: the logit of ``answers[0]``
        minus that of ``answers[1]`` at the last position [B]."""
        with self.hooks(on_attention, on_mlp, on_z):
            logits = self.last_logits(ids)
        return logits[:, answers[0]] - logits[:, answers[1]]

    @contextlib.contextmanager
    def gradients(self, stopped: int | None = None) -> Iterator[None]:
        """Within: forward passes build the graph of the activations' gradients only (the
        parameters' are neither needed nor kept). ``stopped``: a block whose writes to the
        residual pass no gradient (its output ``x_in + (x_out - x_in).detach()``)."""
        frozen = [p for p in self.hf_model.parameters() if p.requires_grad]
        for parameter in frozen:
            parameter.requires_grad_(False)
        handles = [self.hf_model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.requires_grad_(True))]
        if stopped is not None:
            entering = {}

            def enter(module, args, kwargs):
                entering["x"] = args[0] if args else kwargs["hidden_states"]

            def leave(module, args, output):
                out = first_tensor(output)
                kept = entering["x"] + (out - entering["x"]).detach()
                return (kept, *output[1:]) if isinstance(output, tuple) else kept

            layer = self.layers[stopped]
            handles += [layer.register_forward_pre_hook(enter, with_kwargs=True), layer.register_forward_hook(leave)]
        try:
            with torch.enable_grad():
                yield
        finally:
            for handle in handles:
                handle.remove()
            for parameter in frozen:
                parameter.requires_grad_(True)

    def trace(self, input_ids: list[int]) -> Capture:
        """One forward pass of ``input_ids``, every block's components found by data flow."""
        return _trace(self.hf_model, self.layers, input_ids)


"""Ways to read the residual stream of a model, behind one small interface.

- ``BridgeBackend``: TransformerLens 4's ``TransformerBridge``, whose hook names
  (``blocks.{i}.hook_resid_pre/post``, ``ln_final``, ``unembed``) are uniform across
  the architectures it supports. The default.
- ``HooksBackend``: plain PyTorch forward hooks on a transformers model, for an
  architecture the bridge does not support. It finds the decoder layers (the
  ModuleList with one entry per layer) and the final norm by data flow, not by
  name: the final norm is the module whose output is exactly what the output
  embedding receives. No per-architecture table.

Both give the residual stream at layers 0..L (0 entering the first block, k after
block k), the model's own logits, its final norm module and its unembedding; and both
run the decoder layers from any layer on a batch, with the residual overwritten at
chosen (row, layer, position)s (activation patching; ``BlockRunner``). The hooks backend
also reads and writes each block's attention, MLP and heads (``components()``:
``workflow.model.components``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn
from workflow.model.components import ComponentRunner, NotDecomposable
from workflow.model.logit_steps import logit_steps, unapplied_logit_keys

log = logging.getLogger(__name__)

class Backend(Protocol):
    name: str
    hf_model: nn.Module
    final_norm: nn.Module
    unembed: nn.Module
    n_layers: int
    d_model: int
    vocab_size: int

    def capture(self, input_ids: list[int], positions: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals [L+1, T', d] at the kept positions, and the model's logits [1, V] at the last one."""

    def capture_batch(self, sequences: list[list[int]], length: int, read: list[int],
                      from_read: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals [L+1, B, length, d] of token sequences right-padded to ``length``, and the
        model's logits [B, V] at position ``read[b]`` of each; run ``forward_rows(length)``
        sequences to a forward pass, so that each one's numbers do not depend on the others.
        ``from_read``: only positions from ``read[b]`` on are used, and a backend that gains
        by it may leave the others zero (llama.cpp then runs its last block and head on those
        rows alone)."""

    def new_cache(self, n_tokens: int) -> Any:
        """An empty cache for generation of up to ``n_tokens`` positions (``step``'s)."""

    def step(self, tokens: torch.Tensor, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass of generation: ``tokens`` [1, T] after what the key-value ``cache``
        holds (the cache extended). The last position's residual at every layer [L+1, d] and
        the model's logits there [V] (float32)."""

    blocks: BlockRunner  # the decoder layers, run from any layer (activation patching)


# A batch's sequences are padded to a multiple of this many tokens: a probe's numbers
# depend on the padded length (attention sums over it; measured), so every probe is padded
# to the same length alone or in any batch (``canonical_length``). Four, not eight: probes
# of a probe set are mostly 6-14 tokens long, and padding 9 tokens to 16 nearly doubled
# their forward passes' work.
PAD_MULTIPLE = 4


def canonical_length(n_tokens: int) -> int:
    """The padded length of a sequence of ``n_tokens`` tokens (batches hold one length)."""
    return -(-n_tokens // PAD_MULTIPLE) * PAD_MULTIPLE


# A forward pass of probes of one canonical length holds exactly ``forward_rows(length)``
# sequences, whatever the probe set: a matrix product's rows round according to its whole
# shape (MKL picks its kernel and blocking from it: the model's logits at the last position
# differ between products of 2-3 rows and of 4 or more on an AMD EPYC, measured; on an Intel
# Xeon eight probes' records changed when a ninth of their padded length joined them), so a
# probe's numbers are those of every forward pass of its canonical length, alone or beside
# any others. At most FORWARD_ROWS sequences (on two cores passes of 16 were as fast per
# probe as passes of 32, and passes of 8 took 1.1x as long on 200 probes), and about
# FORWARD_TOKENS tokens in all: a pass's matrix products have rows enough to run at full
# speed from there, and a lone long probe pays for fewer rows of FILLER.
FORWARD_ROWS = 16
FORWARD_TOKENS = 192


def forward_rows(length: int) -> int:
    """How many sequences a forward pass of padded length ``length`` holds."""
    return max(1, min(FORWARD_ROWS, FORWARD_TOKENS // length))


def length_batches(n_tokens: list[int], batch_size: int) -> list[tuple[int, list[int]]]:
    """(padded length, indices) batches of sequences of ``n_tokens`` tokens: those of one
    canonical length together, in order, at most ``batch_size`` each, or one forward pass's
    worth where that is more; a whole number of forward passes each but the length's last."""
    groups: dict[int, list[int]] = {}
    for index, n in enumerate(n_tokens):
        groups.setdefault(canonical_length(n), []).append(index)
    found = []
    for length, members in sorted(groups.items()):
        rows = forward_rows(length)
        size = max(rows, batch_size // rows * rows)
        found += [(length, members[i : i + size]) for i in range(0, len(members), size)]
    return found


# The token id of the rows no probe fills: a fixed sequence, so that nothing in a forward pass
# depends on which other probes exist (a causal model's rows do not mix).
FILLER = 0


def padded_batch(sequences: list[list[int]], length: int, device) -> dict[str, torch.Tensor]:
    """Token ids right-padded to ``length``, and their attention mask, in
    ``forward_rows(length)`` rows (at most that many sequences; FILLER in the rest). A causal
    model's real tokens never attend to the padding after them, so their positions and
    numbers are their own whatever the padding holds."""
    rows = forward_rows(length)
    if len(sequences) > rows:
        raise ValueError(f"{len(sequences)} sequences do not fit a forward pass of {rows} of length {length}")
    tokens = torch.full((rows, length), FILLER, dtype=torch.long)
    mask = torch.ones((rows, length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if len(ids) > length:
            raise ValueError(f"a sequence of {len(ids)} tokens does not fit the padded length {length}")
        tokens[row, : len(ids)] = torch.tensor(ids)
        mask[row, len(ids) :] = 0
    return {"input_ids": tokens.to(device), "attention_mask": mask.to(device)}


def reading_logits_at(unembed: nn.Module, read: list[int]):
    """A pre-hook for the output embedding that hands it only position ``read[b]`` of row
    b (the last position of FILLER rows), in FORWARD_ROWS rows (zeros after a pass's own):
    the model's forward then computes (and post-processes, soft-capping say) its logits
    there alone, [FORWARD_ROWS, 1, V], not at every position of the batch, and in a product
    of one shape whatever the padded length (a pass of fewer sequences rounded the model's
    logits otherwise than the lens's products: the identity check's exact 0 became 1e-4)."""
    def hook(module, args):
        hidden = args[0]
        index = torch.tensor(read + [hidden.shape[1] - 1] * (hidden.shape[0] - len(read)), device=hidden.device)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        picked = hidden.new_zeros(max(FORWARD_ROWS, hidden.shape[0]), 1, hidden.shape[2])
        picked[: hidden.shape[0], 0] = hidden[rows, index]
        return (picked, *args[1:])

    return unembed.register_forward_pre_hook(hook)


def in_forward_passes(forward: Callable[[dict[str, torch.Tensor], list[int]], tuple[torch.Tensor, torch.Tensor]],
                      sequences: list[list[int]], length: int, read: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``capture_batch`` of any number of sequences: ``forward_rows(length)`` at a time
    through ``forward(batch, read)`` (residuals [L+1, rows, length, d], logits [rows, V]),
    the filled rows' joined."""
    residuals, logits = [], []
    rows = forward_rows(length)
    for start in range(0, len(sequences), rows):
        chunk = sequences[start : start + rows]
        r, z = forward(padded_batch(chunk, length, device), read[start : start + rows])
        residuals.append(r[:, : len(chunk)])
        logits.append(z[: len(chunk)])
    return torch.cat(residuals, 1), torch.cat(logits)


class Patches:
    """Where a batch's residual stream is overwritten: for each layer (0 entering the first
    block, k after block k), the batch rows, the positions and the vectors to write there.
    A (row, position) appears at most once per layer."""

    def __init__(self) -> None:
        self._layers: dict[int, list[tuple[int, int, torch.Tensor]]] = {}

    def add(self, row: int, layer: int, position: int, value: torch.Tensor) -> None:
        self._layers.setdefault(layer, []).append((row, position, value))

    def of_row(self, row: int) -> list[tuple[int, int, torch.Tensor]]:
        """(layer, position, vector) of every write into batch row ``row``."""
        return [(layer, p, v) for layer, entries in sorted(self._layers.items()) for r, p, v in entries if r == row]

    def at(self, layer: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        entries = self._layers.get(layer)
        if not entries:
            return None
        rows = torch.tensor([r for r, _, _ in entries], device=device)
        positions = torch.tensor([p for _, p, _ in entries], device=device)
        values = torch.stack([v for _, _, v in entries]).to(device=device, dtype=dtype)
        return rows, positions, values


class _Stop(Exception):
    """Raised by a hook once what it reads is read: the rest of the forward is not needed."""


def _overwritten(hidden: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    if where is None:
        return hidden
    rows, positions, values = where
    hidden = hidden.clone()
    hidden[rows, positions] = values
    return hidden


def _keep(positions: str) -> slice:
    return slice(-1, None) if positions == "last" else slice(None)


def last_logits(forward, tokens: torch.Tensor) -> torch.Tensor:
    """The model's logits at the last position only, [1, V].

    ``logits_to_keep=1`` spares the [T, V] logits tensor (537 MB for 512 tokens of a
    262k vocabulary); models that do not take it compute all and are sliced.
    """
    with torch.no_grad():
        try:
            logits = forward(tokens, logits_to_keep=1)
        except TypeError:
            logits = forward(tokens)
    return logits[0, -1:]


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: its parameters' device, or for a model placed by
    accelerate (hf_device_map) its main device, the first that is neither cpu nor disk."""
    placed = getattr(model, "hf_device_map", None)
    if placed:
        devices = [where for where in placed.values() if where not in ("cpu", "disk")]
        if not devices:
            return torch.device("cpu")
        return torch.device(f"cuda:{devices[0]}" if isinstance(devices[0], int) else devices[0])
    return next(model.parameters()).device


class BridgeBackend:
    name = "transformer_bridge"

    def __init__(self, bridge: Any):
        self.bridge = bridge
        self.hf_model = bridge.original_model
        self.final_norm = bridge.ln_final
        self.unembed = bridge.unembed
        self.n_layers = int(bridge.cfg.n_layers)
        self.d_model = int(bridge.cfg.d_model)
        self.vocab_size = int(bridge.cfg.d_vocab)

    def components(self) -> ComponentRunner:
        raise NotDecomposable("TransformerBridge replaces the attention modules with its own components, which are not "
                              "taken apart into heads here: components are read with backend: hooks")

    @functools.cached_property
    def blocks(self) -> BlockRunner:
        # The bridge's blocks are the modules the original model's forward calls.
        return BlockRunner(self.hf_model, find_decoder_layers(self.hf_model, self.n_layers))

    def residual_hooks(self, select: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[torch.Tensor | None], list]:
        """The bridge's own hook points on the residual stream (entering block 0, after
        every block), each keeping ``select`` of its tensor: (the list [L+1] a run fills,
        the hooks to run it with)."""
        captured: list[torch.Tensor | None] = [None] * (self.n_layers + 1)

        def store(layer: int):
            def hook(tensor, hook):
                captured[layer] = select(tensor).detach().clone()
                return tensor

            return hook

        hooks = [("blocks.0.hook_resid_pre", store(0))]
        hooks += [(f"blocks.{i}.hook_resid_post", store(i + 1)) for i in range(self.n_layers)]
        return captured, hooks

    def capture(self, input_ids, positions):
        keep = _keep(positions)
        captured, hooks = self.residual_hooks(lambda t: t[0, keep])
        tokens = torch.tensor([input_ids], device=input_device(self.hf_model))
        logits = last_logits(lambda t, **kw: self.bridge.run_with_hooks(t, fwd_hooks=hooks, **kw), tokens)
        return stacked(captured), logits

    def new_cache(self, n_tokens: int):
        """An empty key-value cache for generation of up to ``n_tokens`` positions."""
        from transformers import DynamicCache

        return DynamicCache(config=self.hf_model.config)

    def step(self, tokens, cache):
        captured, hooks = self.residual_hooks(lambda t: t[0, -1])
        logits = last_logits(lambda t, **kw: self.bridge.run_with_hooks(t, fwd_hooks=hooks, past_key_values=cache, **kw), tokens)
        return stacked(captured), logits[0].float()

    def capture_batch(self, sequences, length, read, from_read=False):  # every position computed either way
        return in_forward_passes(self._forward_pass, sequences, length, read, input_device(self.hf_model))

    def _forward_pass(self, batch, read):
        captured, hooks = self.residual_hooks(lambda t: t)
        handle = reading_logits_at(self.hf_model.get_output_embeddings(), read)
        try:
            with torch.no_grad():
                logits = self.bridge.run_with_hooks(batch["input_ids"], fwd_hooks=hooks, attention_mask=batch["attention_mask"])
        finally:
            handle.remove()
        return stacked(captured), logits[:, -1]


class BlockRunner:
    """The model's decoder layers, run from any layer on a batch of residual streams.

    Each layer gets the arguments the model's own forward passes it for the same prompt
    (attention mask, position embeddings, ...), read once per prompt by a forward pass
    with hooks, so no architecture's forward is re-implemented; a patched run that
    starts at layer l skips the l layers before it, whose residuals are the unpatched
    run's. A model whose forward does more between its layers than call them would run
    differently: ``patching`` checks each prompt's unpatched run against ``capture``.
    """

    def __init__(self, hf_model: nn.Module, layers: nn.ModuleList):
        self.hf_model = hf_model
        self.layers = layers
        self._arguments: dict[tuple[int, ...], list[tuple[tuple, dict]]] = {}

    def arguments(self, input_ids: list[int]) -> list[tuple[tuple, dict]]:
        """(positional arguments after the hidden states, keyword arguments) of each layer."""
        key = tuple(input_ids)
        if key in self._arguments:
            return self._arguments[key]
        seen: list[tuple[tuple, dict] | None] = [None] * len(self.layers)

        def record(index: int):
            def hook(module, args, kwargs):
                rest = args[1:] if args else ()
                seen[index] = (rest, {k: v for k, v in kwargs.items() if k != "hidden_states"})
                if index == len(self.layers) - 1:
                    raise _Stop

            return hook

        handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        try:
            with torch.no_grad():
                self.hf_model(torch.tensor([list(input_ids)], device=input_device(self.hf_model)), use_cache=False)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [i for i, a in enumerate(seen) if a is None]
        if missing:
            raise RuntimeError(f"decoder layers {missing} were not called by the model's forward")
        self._arguments = {key: seen}  # type: ignore[dict-item]  (one prompt at a time)
        return seen  # type: ignore[return-value]

    @torch.no_grad()
    def run(self, input_ids: list[int], hidden: torch.Tensor, start: int, patches: Patches, keep: bool = False):
        """Run residual streams ``hidden`` [B, T, d] (those at layer ``start`` of prompt
        ``input_ids``) through the layers from block ``start`` on, writing ``patches`` at
        each layer first. Returns the residual after the last block at the last position
        [B, d]; with ``keep``, every layer's residual from ``start`` on [L+1-start, B, T, d]."""
        arguments = self.arguments(input_ids)
        n_layers = len(self.layers)
        kept = []
        for index in range(start, n_layers):
            hidden = _overwritten(hidden, patches.at(index, hidden.device, hidden.dtype))
            if keep:
                kept.append(hidden)
            rest, kwargs = arguments[index]
            hidden = _hidden(self.layers[index](hidden, *rest, **kwargs))
        hidden = _overwritten(hidden, patches.at(n_layers, hidden.device, hidden.dtype))
        if keep:
            return torch.stack([*kept, hidden])
        return hidden[:, -1]


@contextlib.contextmanager
def layer_residuals(layers: nn.ModuleList, select: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list[torch.Tensor | None]]:
    """The residual stream of every forward pass run inside, entering the first decoder
    layer and leaving each one, ``select``-ed (a position, all rows), in a list [L+1] that
    each pass overwrites: forward hooks on the model's own decoder layers, removed on exit.
    How the hooks backend captures (the bridge has its own hook points: ``residual_hooks``)."""
    captured: list[torch.Tensor | None] = [None] * (len(layers) + 1)

    def entering(module, args, kwargs):
        captured[0] = select(args[0] if args else kwargs["hidden_states"]).detach().clone()

    def leaving(layer: int):
        def hook(module, args, output):
            captured[layer] = select(_hidden(output)).detach().clone()

        return hook

    handles = [layers[0].register_forward_pre_hook(entering, with_kwargs=True)]
    handles += [layer.register_forward_hook(leaving(i + 1)) for i, layer in enumerate(layers)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def stacked(captured: list[torch.Tensor | None]) -> torch.Tensor:
    missing = [i for i, t in enumerate(captured) if t is None]
    if missing:
        raise RuntimeError(f"residual hooks did not fire for layers {missing}")
    device = captured[0].device  # layers placed on several devices: gathered on the first
    return torch.stack([t.to(device) for t in captured])  # type: ignore[union-attr]


def _hidden(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def find_decoder_layers(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The outermost ModuleList with exactly one module per layer."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            log.info("decoder layers: %s (%d x %s)", name, n_layers, type(module[0]).__name__)
            return module
    raise RuntimeError(f"{type(model).__name__}: no ModuleList of {n_layers} decoder layers found")


@contextlib.contextmanager
def _last_layer_only(layers: nn.ModuleList) -> Iterator[None]:
    """``layers`` holding only its last module while inside (the model's forward runs that
    one), restored after."""
    kept = layers._modules
    layers._modules = {"0": kept[str(len(kept) - 1)]}
    try:
        yield
    finally:
        layers._modules = kept


def find_final_norm(model: nn.Module, layers: nn.ModuleList, probe_ids: list[int]) -> nn.Module:
    """The module whose output is exactly what the output embedding receives.

    Found by running the model once and comparing each module's output with the
    output embedding's input; the first such module in execution order (outside the
    decoder layers) is the final norm (a dropout after it would match too). If the output embedding reads the last
    layer's output unchanged, the model has no final norm (Identity).
    """
    # Kept as one function: one recorded forward pass, its hooks and the comparison of what
    # they saw.
    unembed = model.get_output_embeddings()
    inside = {id(m) for m in layers.modules()} | {id(m) for m in unembed.modules()}
    outputs: list[tuple[nn.Module, torch.Tensor]] = []
    seen: dict[str, torch.Tensor] = {}

    def record(module):
        def hook(mod, args, output):
            if isinstance(output, torch.Tensor):
                outputs.append((module, output.detach()))

        return hook

    handles = [
        m.register_forward_hook(record(m))
        for m in model.modules()
        if id(m) not in inside and m is not model and not list(m.children())
    ]
    # Hooks that only look: a forward hook that returns a value replaces the module's output
    # (a tensor in place of a decoder layer's tuple broke Falcon's forward).
    def unembed_input(mod, args) -> None:
        seen.setdefault("input", args[0].detach())

    def last_layer_output(mod, args, out) -> None:
        seen.setdefault("last", _hidden(out).detach())

    handles.append(unembed.register_forward_pre_hook(unembed_input))
    handles.append(layers[-1].register_forward_hook(last_layer_output))

    def trace(only_last: bool) -> None:
        outputs.clear()
        seen.clear()
        with _last_layer_only(layers) if only_last else contextlib.nullcontext(), torch.no_grad():
            model(torch.tensor([probe_ids], device=input_device(model)))

    try:
        # Through the last decoder layer alone: what feeds the output embedding does not
        # depend on the layers before, and a model read from its file (weights: quantised)
        # then reads one layer's weights, not every one (minutes at Llama 4 Scout's size).
        # A model whose forward needs all its layers is traced whole.
        try:
            trace(only_last=True)
        except Exception as error:  # any: the whole model's pass below is the check
            log.debug("tracing %s through its last layer alone failed (%s): tracing it whole", type(model).__name__, error)
            trace(only_last=False)
    finally:
        for handle in handles:
            handle.remove()
    target = seen["input"]
    # Compared by value: some models flatten the batch before the norm (GPT-J).
    same = [out.reshape(target.shape) for _, out in outputs if out.numel() == target.numel()]
    modules = [m for m, out in outputs if out.numel() == target.numel()]
    matches = [m for m, out in zip(modules, same) if torch.equal(out, target)]
    if matches:
        return matches[0]
    if torch.equal(seen["last"], target):
        return nn.Identity()
    # MiniCPM3 divides the normed hidden state by logits_scaling before its bias-free head,
    # which the lens applies to the logits instead (LOGIT_STEPS): accept the norm when the
    # head reads its output times exactly the factor the config's steps apply.
    factor = _logit_factor(model.config)
    if factor != 1.0 and getattr(unembed, "bias", None) is None:
        scaled = [m for m, out in zip(modules, same) if torch.allclose(out * factor, target, rtol=1e-6, atol=1e-7)]
        if scaled:
            return scaled[0]

    unapplied = unapplied_logit_keys(model.config)
    raise RuntimeError(
        f"{type(model).__name__}: cannot find the module that feeds the output embedding"
        + (f"; the head may read a scaled copy of the final norm's output: the config also has {', '.join(unapplied)}, "
           "which the lens does not apply to this model type (add it to LOGIT_STEPS in workflow/model/logit_steps.py)" if unapplied else "")
    )


def _logit_factor(config) -> float:
    """The product of the multiplying and dividing steps the lens applies to the logits."""

    factor = 1.0
    for _, operation, value in logit_steps(config):
        if operation == "multiply":
            factor *= value
        elif operation == "divide":
            factor /= value
    return factor


class HooksBackend:
    name = "forward_hooks"

    def __init__(self, hf_model: nn.Module, probe_ids: list[int]):
        config = hf_model.config.get_text_config()
        self.hf_model = hf_model
        self.n_layers = int(config.num_hidden_layers)
        self.layers = find_decoder_layers(hf_model, self.n_layers)
        self.unembed = hf_model.get_output_embeddings()
        self.final_norm = find_final_norm(hf_model, self.layers, probe_ids)
        self.d_model = int(config.hidden_size)
        self.vocab_size = int(self.unembed.weight.shape[0])

    @functools.cached_property
    def blocks(self) -> BlockRunner:
        return BlockRunner(self.hf_model, self.layers)

    def components(self) -> ComponentRunner:
        """The blocks' attention, MLP and heads, read and written in forward passes
        (``NotDecomposable`` where they cannot be found)."""
        return ComponentRunner(self.hf_model, self.layers)

    def capture(self, input_ids, positions):
        keep = _keep(positions)
        tokens = torch.tensor([input_ids], device=input_device(self.hf_model))
        with layer_residuals(self.layers, lambda t: t[0, keep]) as captured:
            logits = last_logits(lambda t, **kw: self.hf_model(t, **kw).logits, tokens)
        return stacked(captured), logits

    def new_cache(self, n_tokens: int):
        """An empty key-value cache for generation of up to ``n_tokens`` positions."""
        from transformers import DynamicCache

        return DynamicCache(config=self.hf_model.config)

    def step(self, tokens, cache):
        with layer_residuals(self.layers, lambda t: t[0, -1]) as captured:
            logits = last_logits(
                lambda t, **kw: self.hf_model(input_ids=t, past_key_values=cache, use_cache=True, **kw).logits, tokens
            )
        return stacked(captured), logits[0].float()

    def capture_batch(self, sequences, length, read, from_read=False):  # every position computed either way
        return in_forward_passes(self._forward_pass, sequences, length, read, input_device(self.hf_model))

    def _forward_pass(self, batch, read):
        with layer_residuals(self.layers, lambda t: t) as captured:
            handle = reading_logits_at(self.hf_model.get_output_embeddings(), read)
            try:
                with torch.no_grad():
                    logits = self.hf_model(**batch, use_cache=False).logits
            finally:
                handle.remove()
        return stacked(captured), logits[:, -1]

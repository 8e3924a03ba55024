"""Lens math: residual-stream vectors -> per-layer next-token statistics.

Kept free of model loading so it can be tested on any module pair. All statistics
are derived from log-probabilities in one place (``layer_metrics``), and logits are
reduced to those statistics block by block, so memory stays bounded whatever the
prompt length and vocabulary size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch

from workflow import native

FLOAT32_BYTES = 4
# Full-vocabulary float32 tensors alive at once while reducing one block of rows
# (logits, log-probs, probs, the entropy and KL products and the KL difference, as
# measured with bench/lens_memory.py); sizes the block from the budget.
LIVE_VOCAB_TENSORS = 6


# What architectures do to logits after the unembedding, read from their config, in the
# order applied: (config key, operation, model types it means this for, or None for any).
# The same key can mean different things: Granite divides by ``logits_scaling`` and
# HyperCLOVAX multiplies by it (MiniCPM3 divides the hidden state by it before its
# bias-free head, which is the same as dividing the logits). A key that a model's config
# has but this table does not apply to its type is named by the identity check's error.
LOGIT_STEPS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("logit_scale", "multiply", None),  # Cohere, Cohere 2
    ("lm_head_multiplier", "multiply", None),  # Falcon-H1
    ("output_multiplier", "multiply", ("muse_glimmer",)),
    ("logits_scaling", "divide", ("granite", "minicpm")),  # Granite family; MiniCPM3 (hidden_size / dim_model_base)
    ("logits_scaling", "multiply", ("hyperclovax",)),
    ("final_logit_softcapping", "softcap", None),  # Gemma 2, 3, 3n, 4, VaultGemma, ...: cap * tanh(z / cap)
    ("logits_soft_cap", "softcap", None),  # RecurrentGemma
    ("output_logit_soft_cap", "softcap", ("xlstm",)),
)
# Config keys that look like a step on the logits (for the identity check's message).
LOGIT_STEP_LIKE = ("logit", "softcap", "soft_cap", "multiplier", "dim_model_base")  # the last: MiniCPM's width scaling
NOT_ON_LOGITS = ("attn", "attention", "router", "init")  # soft caps inside attention or routers, initial values


def _config_value(hf_config, key: str):
    text = getattr(hf_config, "text_config", None)
    for cfg in (text, hf_config):
        value = getattr(cfg, key, None) if cfg is not None else None
        if value is not None:
            return value
    return None


def logit_steps(hf_config) -> list[tuple[str, str, float]]:
    """The post-unembedding steps of this architecture: (config key, operation, value)."""
    text = getattr(hf_config, "text_config", None) or hf_config
    model_type = str(getattr(text, "model_type", None) or getattr(hf_config, "model_type", "") or "")
    steps = []
    for key, operation, types in LOGIT_STEPS:
        if types is not None and not model_type.startswith(types):
            continue
        value = _config_value(hf_config, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append((key, operation, float(value)))
    return steps


def unapplied_logit_keys(hf_config) -> list[str]:
    """Config keys that look like a step on the logits but are not applied (see LOGIT_STEPS)."""
    applied = {key for key, _, _ in logit_steps(hf_config)}
    candidates = [key for key, _, _ in LOGIT_STEPS]  # some are properties, not in to_dict()
    for cfg in (getattr(hf_config, "text_config", None), hf_config):
        if cfg is not None:
            candidates += [k for k in cfg.to_dict() if any(w in k for w in LOGIT_STEP_LIKE) and not any(w in k for w in NOT_ON_LOGITS)]
    found = []
    for key in candidates:
        value = _config_value(hf_config, key)
        if key not in applied and key not in found and isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(key)
    return found


def logit_postprocessor(hf_config) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the architecture does to logits after the unembedding (LOGIT_STEPS).

    The lens applies the same steps at every layer, not only the last.
    """
    steps = logit_steps(hf_config)

    def postprocess(logits: torch.Tensor) -> torch.Tensor:
        for _, operation, value in steps:
            if operation == "multiply":
                logits = logits * value
            elif operation == "divide":
                logits = logits / value
            else:
                logits = torch.tanh(logits / value) * value
        return logits

    postprocess.is_identity = not steps  # type: ignore[attr-defined]
    postprocess.steps = steps  # type: ignore[attr-defined]
    return postprocess


class OffloadedLinear(torch.nn.Module):
    """An unembedding whose weights accelerate keeps offloaded (model placement beyond
    the budgets, workflow/models.py): read onto the lens's device when the lens decodes,
    not held. Calls within one decode share the weights read: while any caller holds
    them, the next call returns the same tensors (the streamed lens checks that the
    recorded and the reference head share one matrix)."""

    def __init__(self, module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None = None):
        super().__init__()
        self._module = [module]  # not registered: its hooks and meta tensors stay its own
        self.lens_device = torch.device(device)
        self.dtype = dtype
        self._held: tuple | None = None

    def as_float(self) -> OffloadedLinear:
        return OffloadedLinear(self._module[0], self.lens_device, torch.float32)

    def materialised(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        import weakref

        if self._held is not None:
            weight, bias = self._held[0](), self._held[1]() if self._held[1] is not None else None
            if weight is not None:
                return weight, bias
        from accelerate.utils import align_module_device

        module = self._module[0]
        with align_module_device(module, self.lens_device):
            weight, bias = module.weight, module.bias
        if self.dtype is not None:
            weight = weight.to(self.dtype)
            bias = bias.to(self.dtype) if bias is not None else None
        self._held = (weakref.ref(weight), weakref.ref(bias) if bias is not None else None)
        return weight, bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight, bias = self.materialised()
        return torch.nn.functional.linear(hidden, weight, bias)

    def head_state(self) -> dict[str, torch.Tensor]:
        weight, bias = self.materialised()
        return {"weight": weight, **({"bias": bias} if bias is not None else {})}


def head_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A head module's tensors by name, the same whichever way the model is held: a
    TransformerBridge component's names without its wrapper's prefix, an offloaded
    unembedding's read from where it is."""
    if isinstance(module, OffloadedLinear):
        return module.head_state()
    return {name.removeprefix("_original_component."): tensor for name, tensor in module.state_dict().items()}


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
            unembed = unembed.as_float() if isinstance(unembed, OffloadedLinear) else copy.deepcopy(unembed).float()
            compute_dtype = torch.float32
        else:
            compute_dtype = model_dtype
        return cls(norm if use_norm_lens else None, unembed, postprocess, compute_dtype)

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for residual vectors ``hidden`` of shape [..., d_model]."""
        return self.postprocess(self.unembed(self.normed(hidden))).float()

    @torch.no_grad()
    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The unembedding's input: ``hidden`` through the final norm (when the lens uses it)."""
        h = hidden.to(device=self.device, dtype=self.compute_dtype)
        return self.norm(h) if self.norm is not None else h

    @property
    def device(self) -> torch.device:
        """Where the head's weights are (a model placed across devices keeps it on its main one)."""
        if isinstance(self.unembed, OffloadedLinear):
            return self.unembed.lens_device
        return next(self.unembed.parameters()).device

    def linear(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The unembedding's weight [V, d] and bias, where it is a plain linear map.

        TransformerLens's bridge wraps the model's own ``lm_head``; its original module is
        what computes. Anything else (a custom head) returns None and is decoded whole.
        """
        module = getattr(self.unembed, "original_component", None) or self.unembed
        if isinstance(module, OffloadedLinear):
            return module.materialised()
        if type(module) is not torch.nn.Linear:
            return None
        return module.weight, module.bias


@dataclass
class LayerStats:
    """Statistics of a block of rows (each row one layer at one position)."""

    topk_ids: torch.Tensor  # [..., k]
    topk_probs: torch.Tensor  # [..., k]
    entropy: torch.Tensor  # [...], nats
    answer_prob: torch.Tensor  # [...]
    answer_rank: torch.Tensor  # [...], 1-based
    kl_to_final: torch.Tensor  # [...], KL(final || row), nats

    def cpu(self) -> LayerStats:
        """On the host at once: read element by element from a GPU, each value would be
        its own device-to-host copy, most of a GPU lens's time (bench/README.md, "Why the
        code is shaped as it is")."""
        return LayerStats(*(getattr(self, field.name).cpu() for field in fields(self)))


def answer_column(values: torch.Tensor, answers: int | torch.Tensor) -> torch.Tensor:
    """``values[..., answer]`` with one answer id for all rows, or one per position
    (``answers`` [P] for ``values`` [..., P, V])."""
    if isinstance(answers, int):
        return values[..., answers]
    index = answers.to(values.device).expand(values.shape[:-1])
    return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)


def layer_metrics(
    logits: torch.Tensor, final_logprobs: torch.Tensor, answer_id: int | torch.Tensor, top_k: int
) -> LayerStats:
    """Reduce float32 logits [..., V] to the recorded statistics.

    ``final_logprobs`` (broadcastable to ``logits``) holds the model's final
    log-probabilities at the same position as each row, for KL to final. ``answer_id``: one
    id, or one per position (the second-last dimension of ``logits``).
    """
    logprobs = torch.log_softmax(logits, dim=-1)
    probs = logprobs.exp()
    entropy = -(probs * logprobs).sum(-1)
    top_lp, top_ids = logprobs.topk(top_k, dim=-1)
    answer_lp = answer_column(logprobs, answer_id)
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
    answer_id: int | torch.Tensor,
    top_k: int,
    vocab_size: int,
    working_memory_mb: int,
    transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    separate_positions: bool = False,
) -> Iterator[RowStats]:
    """Yield statistics for every (layer, position) of ``residuals`` [L+1, T, d].

    ``answer_id``: the answer's token id, or one per position [T] (positions that are the
    last positions of different probes). ``separate_positions``: the positions belong to
    different probes, and each one's statistics must not depend on which others share
    the call (a batch of probes): the vocabulary is then cut into blocks of a fixed width
    (BATCH_VOCAB_BLOCK), not one planned from the number of positions.

    ``final_head`` decodes the last layer as the model does (always with its norm),
    giving the reference distribution for KL. ``transform(h, layer)`` is the lens's
    change of basis (identity for the logit lens).

    Where the unembedding is a plain linear map shared by both heads (every supported
    architecture), the vocabulary is streamed in blocks and every statistic is
    accumulated in one pass (``stream_statistics``): the unembedding matrix is read once
    per block of positions instead of once per block of rows. Otherwise rows are decoded
    over the whole vocabulary at once (``block_statistics``).
    """
    weights, shared = head.linear(), final_head.linear()
    if weights is not None and shared is not None and weights[0] is shared[0] and head.compute_dtype == final_head.compute_dtype:
        yield from stream_statistics(residuals, head, final_head, answer_id, top_k, working_memory_mb, transform, separate_positions)
    else:
        yield from block_statistics(residuals, head, final_head, answer_id, top_k, vocab_size, working_memory_mb, transform)


# Matrix products of fewer rows than this take other kernels (matrix-vector ones) whose sums
# round differently (measured with MKL: rows differ in their last bits below 4 rows); a
# product of fewer rows is padded to this many, so that a row's result does not depend on
# how many rows share its product (a probe alone or in a batch).
MIN_PRODUCT_ROWS = 16


def rows_padded(function: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """``function(rows)`` for a [n, d] matrix, computed on at least MIN_PRODUCT_ROWS rows."""
    n = rows.shape[0]
    if n >= MIN_PRODUCT_ROWS:
        return function(rows)
    padded = torch.cat([rows, rows.new_zeros(MIN_PRODUCT_ROWS - n, *rows.shape[1:])])
    return function(padded)[:n]


def _transformed(residuals: torch.Tensor, layers: list[int], transform) -> torch.Tensor:
    hidden = residuals[layers]
    if transform is None:
        return hidden
    return torch.stack([rows_padded(lambda h: transform(h, layer), hidden[i]) for i, layer in enumerate(layers)])


def block_statistics(
    residuals: torch.Tensor,
    head: LensHead,
    final_head: LensHead,
    answer_id: int | torch.Tensor,
    top_k: int,
    vocab_size: int,
    working_memory_mb: int,
    transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> Iterator[RowStats]:
    """Rows decoded over the full vocabulary, in blocks of rows sized from the budget."""
    n_layers_plus_one, n_pos, d_model = residuals.shape
    rows = block_rows(vocab_size, working_memory_mb)
    pos_block = max(1, min(n_pos, rows // n_layers_plus_one))
    layer_block = max(1, min(n_layers_plus_one, rows // pos_block))
    for p0 in range(0, n_pos, pos_block):
        positions = list(range(p0, min(n_pos, p0 + pos_block)))
        final_lp = torch.log_softmax(rows_padded(final_head.logits, residuals[-1, positions]), dim=-1)
        for l0 in range(0, n_layers_plus_one, layer_block):
            layers = list(range(l0, min(n_layers_plus_one, l0 + layer_block)))
            hidden = _transformed(residuals[:, positions], layers, transform)  # [nl, np, d]
            logits = rows_padded(head.logits, hidden.reshape(-1, d_model)).reshape(len(layers), len(positions), -1)
            answers = answer_id if isinstance(answer_id, int) else answer_id[positions]
            stats = layer_metrics(logits, final_lp[None], answers, top_k).cpu()
            del logits
            for i, layer in enumerate(layers):
                for j, position in enumerate(positions):
                    yield _row(stats, (i, j), layer, position)


def _row(stats: LayerStats, index: tuple[int, ...], layer: int, position: int) -> RowStats:
    return RowStats(
        layer=layer,
        position=position,
        topk_ids=stats.topk_ids[index].tolist(),
        topk_probs=stats.topk_probs[index].tolist(),
        entropy=float(stats.entropy[index]),
        answer_prob=float(stats.answer_prob[index]),
        answer_rank=int(stats.answer_rank[index]),
        kl_to_final=float(stats.kl_to_final[index]),
    )


# Streaming: float32 [rows, vocab block] buffers alive at once (shifted logits, their
# exponentials, and one scratch buffer for comparisons and products).
STREAM_LIVE_TENSORS = 3
MIN_VOCAB_BLOCK = 512
CACHE_CELLS = 2**21
# exp() of float32 overflows above about 88: a block whose logits exceed a row's
# reference by more than this moves the reference first.
REBASE_ABOVE = 60.0
EXP_FLOOR = -87.0


def stream_plan(n_layers_plus_one: int, n_pos: int, vocab: int, working_memory_mb: int, on_cpu: bool = True) -> tuple[int, int]:
    """(positions per block, vocabulary columns per block).

    On a GPU the blocks fill ``working_memory_mb``: there each block costs kernel launches
    and a few synchronisations whatever its size, and no cache is to be kept. On a CPU,
    buffers of about CACHE_CELLS floats each stay in the processor's cache between the
    passes over a block, within ``working_memory_mb``. All positions go at once while the
    vocabulary blocks stay at least MIN_VOCAB_BLOCK wide (so the matrix product stays
    efficient); fewer positions otherwise. Block widths are multiples of 64, where the
    matrix product runs fastest. The measurements behind each choice are in bench/README.md
    ("Why the code is shaped as it is").
    """
    cells = working_memory_mb * 2**20 // (FLOAT32_BYTES * STREAM_LIVE_TENSORS)
    if on_cpu:
        cells = min(CACHE_CELLS, cells)
    pos_block = n_pos
    while pos_block > 1 and (n_layers_plus_one + 1) * pos_block * MIN_VOCAB_BLOCK > cells:
        pos_block = (pos_block + 1) // 2
    rows = (n_layers_plus_one + 1) * pos_block
    return pos_block, int(min(vocab, max(64, cells // rows // 64 * 64)))


# The vocabulary block width when the positions are different probes' (a batch): fixed, so
# that a probe's sums are taken over the same blocks in the same order whatever shares its
# call; narrow enough that a few dozen probes' rows share each block of the unembedding
# (read once per block of positions, which is what batching saves).
BATCH_VOCAB_BLOCK = 2048


def batch_plan(n_layers_plus_one: int, n_pos: int, vocab: int, working_memory_mb: int, on_cpu: bool = True) -> tuple[int, int]:
    """(positions per block, vocabulary columns per block) for a batch of probes' positions."""
    cells = working_memory_mb * 2**20 // (FLOAT32_BYTES * STREAM_LIVE_TENSORS)
    if on_cpu:
        cells = min(CACHE_CELLS, cells)
    width = min(vocab, BATCH_VOCAB_BLOCK)
    return max(1, min(n_pos, cells // ((n_layers_plus_one + 1) * width))), width


def uses_kernel(postprocess: Callable, device: torch.device | str) -> bool:
    """Whether the streamed lens runs the fused CPU kernel (workflow/native.py): on a CPU,
    where the logits are the linear map itself, and where the kernel builds and pays
    (``native.preferred``)."""
    return getattr(postprocess, "is_identity", False) and torch.device(device).type == "cpu" and native.preferred()


@torch.no_grad()
def stream_statistics(
    residuals: torch.Tensor,
    head: LensHead,
    final_head: LensHead,
    answer_id: int | torch.Tensor,
    top_k: int,
    working_memory_mb: int,
    transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    separate_positions: bool = False,
) -> Iterator[RowStats]:
    """One pass over vocabulary blocks per block of positions; see ``lens_statistics``.

    Each row's answer logit is computed first, in float64 from the row's input to the
    unembedding and the answer's row of the weights; the rank counts the other tokens
    whose logit exceeds it. Every row r (a layer at a position) keeps a reference s_r (its
    largest logit in the first block) and, over the blocks seen so far, with t = z - s_r
    and e = exp(t):
    S = sum e and Q = sum e*t, so log-sum-exp = s_r + log S and entropy = log S - Q/S
    without cancellation between large numbers; the top-k of t; the count of logits
    above the answer's (its rank); and C = sum over v of e_final(v) * t(v) against the
    final distribution at its position, so KL(final || row) = (Q_f - C) / S_f - log S_f
    + log S. On a CPU, where the logits are the linear map itself (no soft-capping), the
    fused kernel (workflow/native.py) does all of this per block in one sweep per row,
    C included. Otherwise torch does it in passes over the block; where the logits are the
    linear map itself C then comes from G = sum e_final W, a small matrix product, instead
    of a pass.
    """
    n_layers_plus_one, n_pos, _ = residuals.shape
    weight, bias = head.linear()  # type: ignore[misc]
    vocab = weight.shape[0]
    device = residuals.device
    # Where logits are the linear map itself, sums against the final distribution can be
    # taken through the weights (see G below).
    linear = getattr(head.postprocess, "is_identity", False)
    # The final distribution is the lens's own last layer when both heads are the same and
    # the transform leaves the last layer alone (a tuned lens has no translator there).
    shared_final = head is final_head and (transform is None or getattr(transform, "final_is_identity", False))
    fused = uses_kernel(head.postprocess, device)
    plan = batch_plan if separate_positions else stream_plan
    pos_block, vocab_block = plan(n_layers_plus_one, n_pos, vocab, working_memory_mb, device.type == "cpu")
    starts = list(range(0, vocab, vocab_block))
    answers = torch.full((n_pos,), answer_id, dtype=torch.long) if isinstance(answer_id, int) else answer_id.long().cpu()
    layers = list(range(n_layers_plus_one))
    for p0 in range(0, n_pos, pos_block):
        positions = list(range(p0, min(n_pos, p0 + pos_block)))
        n_p = len(positions)
        n_rows = n_layers_plus_one * n_p
        hidden = head.normed(_transformed(residuals[:, positions], layers, transform)).reshape(n_rows, -1)
        if shared_final:
            inputs = hidden
            final_index = torch.arange(n_rows - n_p, n_rows, device=device)
        else:
            inputs = torch.cat([hidden, final_head.normed(residuals[-1, positions]).to(hidden.dtype)])
            final_index = torch.arange(n_rows, n_rows + n_p, device=device)
        n_all = inputs.shape[0]
        owner = torch.arange(n_rows, device=device) % n_p  # each row's position within the block
        row_answers = answers[positions].to(device)[owner]
        # Each row's answer logit, in float64, against which every block's logits are counted.
        answer_64 = (hidden.double() * weight[row_answers].double()).sum(-1)
        if bias is not None:
            answer_64 = answer_64 + bias[row_answers].double()
        answer_64 = head.postprocess(answer_64)
        answer_z = answer_64.float()
        # The kernel reads the logits buffer only; the torch path needs all three.
        buffers = [torch.empty(n_all * vocab_block, device=device) for _ in range(1 if fused else STREAM_LIVE_TENSORS)]
        shift = S = Q = top_values = top_ids = None
        count = torch.zeros(n_rows, device=device)
        cross = torch.zeros(n_rows, device=device)  # C, when accumulated block by block
        G = torch.zeros(n_p, inputs.shape[1], device=device)  # sum e_final W, for C at the end
        B = torch.zeros(n_p, device=device)  # sum e_final b
        if fused:  # the kernel's accumulators: float64 sums and references, exact counts
            state = {name: torch.zeros(n_all, dtype=torch.float64) for name in ("S", "Q", "cross", "delta")}
            state |= {"count": torch.zeros(n_all, dtype=torch.int64), "block_max": torch.empty(n_all)}
            state["final_prev"] = torch.zeros(n_p, dtype=torch.float64)
            e_final = torch.empty(n_p * vocab_block)
        for v0 in starts:
            v1 = min(vocab, v0 + vocab_block)
            width = v1 - v0
            z, e, scratch = (buffers[min(i, len(buffers) - 1)][: n_all * width].view(n_all, width) for i in range(3))
            block = weight[v0:v1]
            if head.compute_dtype == torch.float32 and n_all >= MIN_PRODUCT_ROWS:
                torch.mm(inputs, block.T, out=z)
            else:
                z.copy_(rows_padded(lambda x: x @ block.T, inputs))
            if bias is not None:
                z += bias[v0:v1]
            if not linear:
                z.copy_(head.postprocess(z))
            if top_values is None:  # the first block sets each row's reference
                top_values = torch.full((n_rows, top_k), -torch.inf, device=device)
                top_ids = torch.zeros((n_rows, top_k), dtype=torch.int64, device=device)
                if fused:
                    state["shift"] = z.amax(-1).double()
                else:
                    shift = z.amax(-1)
                    S, Q = torch.zeros_like(shift), torch.zeros_like(shift)
            if fused:
                # One sweep per row: block maximum, rank count, rebasing, S, Q and C.
                native.lens_block(z, answer_z, REBASE_ABOVE, n_p, state, e_final[: n_p * width].view(n_p, width))
                raw_max = state["block_max"]
            else:
                raw_max = z.amax(-1)
                # Rank compares raw logits, before any shift can round near-ties together.
                count += torch.gt(z[:n_rows], answer_z[:, None], out=scratch[:n_rows]).sum(-1)  # 0/1 sums: exact
            # The answer's own logit, as this block's product rounds it, is not counted above itself.
            own = ((row_answers >= v0) & (row_answers < v1)).nonzero().squeeze(1)
            if own.numel():
                above_itself = z[own, row_answers[own] - v0] > answer_z[own]
                if fused:
                    state["count"][own.cpu()] -= above_itself.cpu().long()
                else:
                    count[own] -= above_itself.to(count.dtype)
            # Top-k compares raw logits too, in the rows whose k-th best this block beats.
            raw = z[:n_rows]
            better = (raw_max[:n_rows] > top_values[:, -1]).nonzero().squeeze(1)
            if better.numel():
                values, ids = raw[better].topk(min(top_k, width), dim=-1)
                merged_values = torch.cat([top_values[better], values], dim=-1)
                merged_ids = torch.cat([top_ids[better], ids + v0], dim=-1)
                best, order = merged_values.topk(top_k, dim=-1)
                top_values[better] = best
                top_ids[better] = merged_ids.gather(-1, order)
            if fused:
                continue
            high = raw_max - shift > REBASE_ABOVE
            if high.any():
                # Move those rows' reference up to this block's maximum: sums over exp()
                # scale down by exp(-delta), and Q = sum e*t shifts with t.
                delta = torch.where(high, raw_max - shift, torch.zeros_like(shift))
                scale = torch.exp(-delta)
                final_sums = S[final_index].clone()
                Q = scale * (Q - delta * S)
                S = S * scale
                shift += delta
                final_scale = scale[final_index]
                if linear:
                    G *= final_scale[:, None]
                    B *= final_scale
                else:
                    cross = (cross - delta[:n_rows] * final_sums[owner]) * final_scale[owner]
            z -= shift[:, None]  # z now holds t = z - s
            # exp() below about -87 underflows, and torch's vectorised exp takes a slow path
            # there (40x on x86); exp(-87) = 1.6e-38 instead of 0 changes no statistic.
            torch.clamp(z, min=EXP_FLOOR, out=e).exp_()
            t = z[:n_rows]
            final_e = e[final_index]
            if linear:
                # float32 sums (a half-precision head's block is widened; it is small).
                G += final_e @ block.float()
                if bias is not None:
                    B += final_e @ bias[v0:v1].float()
            else:
                cross += torch.mul(t.view(n_layers_plus_one, n_p, width), final_e, out=scratch[:n_rows].view(n_layers_plus_one, n_p, width)).sum(-1).reshape(n_rows)
            S += e.sum(-1)
            Q += torch.mul(z, e, out=scratch).sum(-1)
        if fused:
            shift, S, Q, cross, count = state["shift"], state["S"], state["Q"], state["cross"][:n_rows], state["count"][:n_rows]
        elif linear:
            cross = (hidden.float() * G[owner]).sum(-1) + B[owner] - shift[:n_rows] * S[final_index][owner]
        # Differences of sums and exp of differences in float64.
        shift, S, Q, cross = shift.double(), S.double(), Q.double(), cross.double()
        log_s = torch.log(S)
        final = final_index[owner]
        kl = (Q[final] - cross) / S[final] - log_s[final] + log_s[:n_rows]
        stats = LayerStats(
            topk_ids=top_ids,
            topk_probs=torch.exp(top_values.double() - shift[:n_rows, None] - log_s[:n_rows, None]),
            entropy=log_s[:n_rows] - Q[:n_rows] / S[:n_rows],
            answer_prob=torch.exp(answer_64 - shift[:n_rows] - log_s[:n_rows]),
            answer_rank=count.long() + 1,
            kl_to_final=kl.clamp_min(0.0),
        ).cpu()
        for r in range(n_rows):
            yield _row(stats, (r,), layers[r // n_p], positions[r % n_p])

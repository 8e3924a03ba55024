"""Lens math: residual-stream vectors -> per-layer next-token statistics.

Kept free of model loading so it can be tested on any module pair (the head is
``workflow.model.head``, the architectures' logit steps ``workflow.model.logit_steps``). All statistics
are derived from log-probabilities in one place (``layer_metrics``), and logits are
reduced to those statistics block by block, so memory stays bounded whatever the
prompt length and vocabulary size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch

from workflow.native import lens_block as kernel
from workflow.model.head import LensHead

FLOAT32_BYTES = 4
# Full-vocabulary float32 tensors alive at once while reducing one block of rows
# (logits, log-probs, probs, the entropy and KL products and the KL difference, as
# measured with bench/lens_memory.py); sizes the block from the budget.
LIVE_VOCAB_TENSORS = 6


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


# more than 6 parameters: the lens math's inputs: tensors, heads and sizes a carrier would hide from the reader of the math
def lens_statistics(
    residuals: torch.Tensor,
    head: LensHead,
    reference: LensHead,
    answer_id: int | torch.Tensor,
    top_k: int,
    vocab_size: int,
    working_memory_mb: int,
    tuned: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    separate_positions: bool = False,
    final: FinalLogits | None = None,
) -> Iterator[RowStats]:
    """Yield statistics for every (layer, position) of ``residuals`` [L+1, T, d].

    ``answer_id``: the answer's token id, or one per position [T] (positions that are the
    last positions of different probes). ``separate_positions``: the positions belong to
    different probes, and each one's statistics must not depend on which others share
    the call (a batch of probes): they are then decoded DECODE_POSITIONS at a time over
    vocabulary blocks of a fixed width (BATCH_VOCAB_BLOCK), not in blocks planned from the
    number of positions.

    ``reference`` decodes the last layer as the model does (always with its norm),
    giving the reference distribution for KL. ``tuned(h, layer)`` is the lens's
    change of basis (identity for the logit lens). ``final``: where to leave the reference
    head's logits at the last layer for some positions (``FinalLogits``), as the pass over
    the vocabulary computes them.

    Where the unembedding is a plain linear map shared by both heads (every supported
    architecture), the vocabulary is streamed in blocks and every statistic is
    accumulated in one pass (``stream_statistics``): the unembedding matrix is read once
    per block of positions instead of once per block of rows. Otherwise rows are decoded
    over the whole vocabulary at once (``block_statistics``).
    """
    weights, shared = head.linear(), reference.linear()
    if weights is not None and shared is not None and weights[0] is shared[0] and head.compute_dtype == reference.compute_dtype:
        yield from stream_statistics(residuals, head, reference, answer_id, top_k, working_memory_mb, tuned, separate_positions, final)
    else:
        yield from block_statistics(residuals, head, reference, answer_id, top_k, vocab_size, working_memory_mb, tuned, final)


class FinalLogits:
    """The reference head's logits at the last layer at chosen ``positions`` of a
    ``lens_statistics`` call (``logits`` [n, V], in ``positions``' order), kept as the lens's
    own pass over the vocabulary computes them: the identity check compares these with the
    model's own logits, so the lens is checked on the very numbers its last layer's records
    come from, and the head's product is not computed a second time for the check (at
    Scout's 202k vocabulary that product was as long as the lens's)."""

    def __init__(self, positions: list[int]):
        self.positions = positions
        self.logits: torch.Tensor | None = None

    def start(self, vocab: int, device: torch.device) -> None:
        """Room for the logits (NaN until kept: a position never kept fails the check)."""
        if self.logits is None:
            self.logits = torch.full((len(self.positions), vocab), float("nan"), device=device)

    def wanted(self, block: list[int], rows_of: torch.Tensor | None = None) -> tuple[list[int], torch.Tensor | None]:
        """Which rows of ``logits`` a block of positions fills, and from which of its logits'
        rows (``rows_of``: each position's row there, where the rows are not the positions
        themselves); once per block of positions, for every block of the vocabulary."""
        index = {p: j for j, p in enumerate(block)}
        pairs = [(k, index[p]) for k, p in enumerate(self.positions) if p in index]
        if not pairs:
            return [], None
        source = torch.tensor([j for _, j in pairs], device=None if rows_of is None else rows_of.device)
        return [k for k, _ in pairs], source if rows_of is None else rows_of[source]

    def keep(self, wanted: tuple[list[int], torch.Tensor | None], logits: torch.Tensor, v0: int = 0) -> None:
        """The wanted rows of ``logits`` (a block of positions' reference logits over the
        vocabulary's columns from ``v0``) kept."""
        kept, source = wanted
        if kept:
            if self.logits is None or source is None:
                raise RuntimeError("FinalLogits.keep before FinalLogits.start")
            self.logits[kept, v0 : v0 + logits.shape[1]] = logits[source.to(logits.device)].to(self.logits.device)


# A product of the lens's heads or translators on rows that several probes share runs on
# exactly this many rows at a time: a product's rows round according to its whole shape (MKL
# picks its kernel and blocking from it; measured on an AMD EPYC: rows differ in their last
# bits between products of 2 or 3 rows and of 4 or more; other processors differ at other
# sizes), so a product of one fixed shape gives a row the same bits whatever shares it. 32:
# a batch's identity check in one product (16 took 1.1x as long on 200 probes of Gemma's
# 262k vocabulary). (The streamed lens fixes its shapes with DECODE_POSITIONS.)
PRODUCT_ROWS = 32


def rows_padded(function: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, block: int = PRODUCT_ROWS) -> torch.Tensor:
    """``function(rows)`` for a [n, d] matrix, computed ``block`` rows at a time (the last
    block filled with zero rows): every call of ``function`` has the same shape whatever n."""
    n = rows.shape[0]
    if n == block:
        return function(rows)
    out = []
    for r0 in range(0, n, block):
        part = rows[r0 : r0 + block]
        if part.shape[0] < block:
            part = torch.cat([part, part.new_zeros(block - part.shape[0], *part.shape[1:])])
        out.append(function(part))
    return torch.cat(out)[:n]


def _transformed(residuals: torch.Tensor, layers: list[int], tuned) -> torch.Tensor:
    hidden = residuals[layers]
    if tuned is None:
        return hidden
    return torch.stack([rows_padded(lambda h: tuned(h, layer), hidden[i]) for i, layer in enumerate(layers)])


# more than 6 parameters: lens_statistics's inputs, passed on
def block_statistics(
    residuals: torch.Tensor,
    head: LensHead,
    reference: LensHead,
    answer_id: int | torch.Tensor,
    top_k: int,
    vocab_size: int,
    working_memory_mb: int,
    tuned: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    final: FinalLogits | None = None,
) -> Iterator[RowStats]:
    """Rows decoded over the full vocabulary, in blocks of rows sized from the budget."""
    n_layers_plus_one, n_pos, d_model = residuals.shape
    rows = block_rows(vocab_size, working_memory_mb)
    pos_block = max(1, min(n_pos, rows // n_layers_plus_one))
    layer_block = max(1, min(n_layers_plus_one, rows // pos_block))
    for p0 in range(0, n_pos, pos_block):
        positions = list(range(p0, min(n_pos, p0 + pos_block)))
        final_logits = rows_padded(reference.logits, residuals[-1, positions])
        if final is not None:
            final.start(final_logits.shape[-1], final_logits.device)
            final.keep(final.wanted(positions), final_logits)
        final_lp = torch.log_softmax(final_logits, dim=-1)
        for l0 in range(0, n_layers_plus_one, layer_block):
            layers = list(range(l0, min(n_layers_plus_one, l0 + layer_block)))
            hidden = _transformed(residuals[:, positions], layers, tuned)  # [nl, np, d]
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
# shift by more than this moves the shift first.
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
# Positions decoded together when they are different probes' (or generated tokens'): always
# this many, the missing ones zero residuals whose statistics are dropped, so that every
# matrix product of the streamed lens has the same shape whichever probes share it (a
# product's rows round according to its whole shape: ``PRODUCT_ROWS``).
DECODE_POSITIONS = 8


def batch_plan(n_layers_plus_one: int, n_pos: int, vocab: int, working_memory_mb: int, on_cpu: bool = True) -> tuple[int, int]:
    """(positions per block, vocabulary columns per block) for a batch of probes' positions:
    DECODE_POSITIONS and BATCH_VOCAB_BLOCK, whatever the batch."""
    return DECODE_POSITIONS, min(vocab, BATCH_VOCAB_BLOCK)


def uses_kernel(postprocess: Callable, device: torch.device | str) -> bool:
    """Whether the streamed lens runs the fused CPU kernel (workflow/native/lens_block.py): on a CPU,
    where the logits are the linear map itself, and where the kernel builds and pays
    (``kernel.preferred``)."""
    return getattr(postprocess, "is_identity", False) and torch.device(device).type == "cpu" and kernel.preferred()


# more than 6 parameters: lens_statistics's inputs, passed on
@torch.no_grad()
def stream_statistics(
    residuals: torch.Tensor,
    head: LensHead,
    reference: LensHead,
    answer_id: int | torch.Tensor,
    top_k: int,
    working_memory_mb: int,
    tuned: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    separate_positions: bool = False,
    final: FinalLogits | None = None,
) -> Iterator[RowStats]:
    """One pass over vocabulary blocks per block of positions; see ``lens_statistics``.

    Each row's answer logit is computed first, in float64 from the row's input to the
    unembedding and the answer's row of the weights; the rank counts the other tokens
    whose logit exceeds it. Every row r (a layer at a position) keeps a shift s_r (its
    largest logit in the first block) and, over the blocks seen so far, with t = z - s_r
    and e = exp(t):
    S = sum e and Q = sum e*t, so log-sum-exp = s_r + log S and entropy = log S - Q/S
    without cancellation between large numbers; the top-k of t; the count of logits
    above the answer's (its rank); and C = sum over v of e_final(v) * t(v) against the
    final distribution at its position, so KL(final || row) = (Q_f - C) / S_f - log S_f
    + log S. The loop over blocks is written once here; the sums are one of three
    algorithms (``sums_for``): the fused CPU kernel (``FusedSums``), torch in passes over
    the block (``TorchSums``), or torch taking C through the weights where the logits are
    the linear map itself (``LinearSums``).
    """
    n_layers_plus_one, n_pos, _ = residuals.shape
    weight, bias = head.linear()  # type: ignore[misc]
    vocab = weight.shape[0]
    device = residuals.device
    plan = batch_plan if separate_positions else stream_plan
    pos_block, vocab_block = plan(n_layers_plus_one, n_pos, vocab, working_memory_mb, device.type == "cpu")
    answers = torch.full((n_pos,), answer_id, dtype=torch.long) if isinstance(answer_id, int) else answer_id.long().cpu()
    real = n_pos
    if separate_positions and n_pos % pos_block:
        missing = pos_block - n_pos % pos_block
        residuals = torch.cat([residuals, residuals.new_zeros(n_layers_plus_one, missing, residuals.shape[2])], 1)
        answers = torch.cat([answers, answers.new_zeros(missing)])
        n_pos += missing
    if final is not None:
        final.start(vocab, device)
    for p0 in range(0, n_pos, pos_block):
        rows = StreamRows.of(residuals, list(range(p0, min(n_pos, p0 + pos_block))), head, reference, answers, tuned)
        sums = sums_for(head, rows, vocab_block)
        top = TopK(rows.n_rows, top_k, device)
        kept = final.wanted(rows.positions, rows.final_index) if final is not None else None
        buffers = [torch.empty(rows.n_all * vocab_block, device=device) for _ in range(sums.BUFFERS)]
        for v0 in range(0, vocab, vocab_block):
            v1 = min(vocab, v0 + vocab_block)
            z, e, scratch = (buffers[min(i, len(buffers) - 1)][: rows.n_all * (v1 - v0)].view(rows.n_all, v1 - v0) for i in range(3))
            block = weight[v0:v1]
            block_logits(head, rows.inputs, block, bias[v0:v1] if bias is not None else None, z)
            if kept is not None:
                final.keep(kept, z, v0)  # type: ignore[union-attr]
            if v0 == 0:  # the first block sets each row's shift
                sums.start(z)
            raw_max = sums.count(z, scratch)
            # The answer's own logit, as this block's product rounds it, is not counted above itself.
            own = ((rows.answers >= v0) & (rows.answers < v1)).nonzero().squeeze(1)
            if own.numel():
                sums.uncount(own, z[own, rows.answers[own] - v0] > rows.answer_z[own])
            top.merge(z[: rows.n_rows], raw_max[: rows.n_rows], v0)
            sums.add(z, e, scratch, raw_max, block, bias[v0:v1] if bias is not None else None)
        yield from (stats for stats in rows.statistics(top, *sums.totals()) if stats.position < real)


def block_logits(head: LensHead, inputs: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """The logits of ``inputs`` over one block of the vocabulary, into ``out``: one product
    (whose shape is one probe's own, or fixed for several probes' positions), of at least
    PRODUCT_ROWS rows."""
    if head.compute_dtype == torch.float32 and inputs.shape[0] >= PRODUCT_ROWS:
        torch.mm(inputs, block.T, out=out)
    else:
        out.copy_(rows_padded(lambda x: x @ block.T, inputs))
    if bias is not None:
        out += bias
    if not getattr(head.postprocess, "is_identity", False):
        out.copy_(head.postprocess(out))


@dataclass
class StreamRows:
    """The rows of one block of positions: every layer at each position (``n_rows``), then,
    unless the lens's own last layer is the final distribution, the final head's rows
    (``n_all`` in all); each row's answer, and its answer logit in float64."""

    layers: list[int]
    positions: list[int]
    hidden: torch.Tensor  # [n_rows, d]: the unembedding's input
    inputs: torch.Tensor  # [n_all, d]
    final_index: torch.Tensor  # [n_p]: the rows of the final distribution
    owner: torch.Tensor  # [n_rows]: each row's position within the block
    answers: torch.Tensor  # [n_rows]
    answer_64: torch.Tensor  # [n_rows], float64
    answer_z: torch.Tensor  # [n_rows], float32

    @classmethod
    def of(cls, residuals, positions, head, reference, answers, tuned) -> StreamRows:
        n_layers_plus_one = residuals.shape[0]
        layers = list(range(n_layers_plus_one))
        device = residuals.device
        n_p = len(positions)
        n_rows = n_layers_plus_one * n_p
        hidden = head.normed(_transformed(residuals[:, positions], layers, tuned)).reshape(n_rows, -1)
        # The final distribution is the lens's own last layer when both heads are the same and
        # the tuned lens leaves the last layer alone (it has no translator there).
        if head is reference and (tuned is None or getattr(tuned, "final_is_identity", False)):
            inputs = hidden
            final_index = torch.arange(n_rows - n_p, n_rows, device=device)
        else:
            inputs = torch.cat([hidden, reference.normed(residuals[-1, positions]).to(hidden.dtype)])
            final_index = torch.arange(n_rows, n_rows + n_p, device=device)
        owner = torch.arange(n_rows, device=device) % n_p
        row_answers = answers[positions].to(device)[owner]
        weight, bias = head.linear()  # type: ignore[misc]
        # Each row's answer logit, in float64, against which every block's logits are counted.
        answer_64 = (hidden.double() * weight[row_answers].double()).sum(-1)
        if bias is not None:
            answer_64 = answer_64 + bias[row_answers].double()
        answer_64 = head.postprocess(answer_64)
        return cls(layers, positions, hidden, inputs, final_index, owner, row_answers, answer_64, answer_64.float())

    @property
    def n_p(self) -> int:
        return len(self.positions)

    @property
    def n_rows(self) -> int:
        return self.hidden.shape[0]

    @property
    def n_all(self) -> int:
        return self.inputs.shape[0]

    def statistics(self, top: TopK, shift, S, Q, cross, count) -> Iterator[RowStats]:
        """Every row's statistics from the sums: differences of sums and exp of differences in float64."""
        n_rows = self.n_rows
        shift, S, Q, cross = shift.double(), S.double(), Q.double(), cross.double()
        log_s = torch.log(S)
        final = self.final_index[self.owner]
        kl = (Q[final] - cross) / S[final] - log_s[final] + log_s[:n_rows]
        stats = LayerStats(
            topk_ids=top.ids,
            topk_probs=torch.exp(top.values.double() - shift[:n_rows, None] - log_s[:n_rows, None]),
            entropy=log_s[:n_rows] - Q[:n_rows] / S[:n_rows],
            answer_prob=torch.exp(self.answer_64 - shift[:n_rows] - log_s[:n_rows]),
            answer_rank=count.long() + 1,
            kl_to_final=kl.clamp_min(0.0),
        ).cpu()
        for r in range(n_rows):
            yield _row(stats, (r,), self.layers[r // self.n_p], self.positions[r % self.n_p])


class TopK:
    """Each row's k largest raw logits and their token ids, merged block by block."""

    def __init__(self, n_rows: int, k: int, device):
        self.k = k
        self.values = torch.full((n_rows, k), -torch.inf, device=device)
        self.ids = torch.zeros((n_rows, k), dtype=torch.int64, device=device)

    def merge(self, raw: torch.Tensor, raw_max: torch.Tensor, v0: int) -> None:
        """Raw logits compared, in the rows whose k-th best this block beats."""
        better = (raw_max > self.values[:, -1]).nonzero().squeeze(1)
        if not better.numel():
            return
        values, ids = raw[better].topk(min(self.k, raw.shape[1]), dim=-1)
        merged_values = torch.cat([self.values[better], values], dim=-1)
        merged_ids = torch.cat([self.ids[better], ids + v0], dim=-1)
        best, order = merged_values.topk(self.k, dim=-1)
        self.values[better] = best
        self.ids[better] = merged_ids.gather(-1, order)


def sums_for(head: LensHead, rows: StreamRows, vocab_block: int):
    """The algorithm for this head on this device: the fused kernel where it runs, else
    torch, through the weights where the logits are the linear map itself."""
    if uses_kernel(head.postprocess, rows.inputs.device):
        return FusedSums(rows, vocab_block)
    if getattr(head.postprocess, "is_identity", False):
        return LinearSums(rows)
    return TorchSums(rows)


class FusedSums:
    """The fused CPU kernel (workflow/native/lens_block.py): per block one sweep per row (block maximum,
    rank count, rebasing, S, Q and C), in float64 sums and exact counts. It reads the
    logits buffer only."""

    BUFFERS = 1

    def __init__(self, rows: StreamRows, vocab_block: int):
        self.rows = rows
        n_all, n_p = rows.n_all, rows.n_p
        self.state = {name: torch.zeros(n_all, dtype=torch.float64) for name in ("S", "Q", "cross", "delta")}
        self.state |= {"count": torch.zeros(n_all, dtype=torch.int64), "block_max": torch.empty(n_all)}
        self.state["final_prev"] = torch.zeros(n_p, dtype=torch.float64)
        self.e_final = torch.empty(n_p * vocab_block)

    def start(self, z: torch.Tensor) -> None:
        self.state["shift"] = z.amax(-1).double()

    def count(self, z: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        n_p, width = self.rows.n_p, z.shape[1]
        kernel.lens_block(z, self.rows.answer_z, REBASE_ABOVE, n_p, self.state, self.e_final[: n_p * width].view(n_p, width))
        return self.state["block_max"]

    def uncount(self, own: torch.Tensor, above_itself: torch.Tensor) -> None:
        self.state["count"][own.cpu()] -= above_itself.cpu().long()

    def add(self, z, e, scratch, raw_max, block, bias) -> None:
        """Nothing more: the kernel's sweep took the sums."""

    def totals(self):
        n_rows, state = self.rows.n_rows, self.state
        return state["shift"], state["S"], state["Q"], state["cross"][:n_rows], state["count"][:n_rows]


class TorchSums:
    """Torch, in passes over each block: the rank count on raw logits, then the shift to each
    row's own (moved up where a block exceeds it by REBASE_ABOVE), exp, and the sums;
    C is accumulated block by block."""

    BUFFERS = STREAM_LIVE_TENSORS

    def __init__(self, rows: StreamRows):
        self.rows = rows
        device = rows.inputs.device
        self.counts = torch.zeros(rows.n_rows, device=device)
        self.cross = torch.zeros(rows.n_rows, device=device)  # C

    def start(self, z: torch.Tensor) -> None:
        self.shift = z.amax(-1)
        self.S, self.Q = torch.zeros_like(self.shift), torch.zeros_like(self.shift)

    def count(self, z: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        n_rows = self.rows.n_rows
        # Rank compares raw logits, before any shift can round near-ties together.
        self.counts += torch.gt(z[:n_rows], self.rows.answer_z[:, None], out=scratch[:n_rows]).sum(-1)  # 0/1 sums: exact
        return z.amax(-1)

    def uncount(self, own: torch.Tensor, above_itself: torch.Tensor) -> None:
        self.counts[own] -= above_itself.to(self.counts.dtype)

    def add(self, z, e, scratch, raw_max, block, bias) -> None:
        rows = self.rows
        high = raw_max - self.shift > REBASE_ABOVE
        if high.any():
            # Move those rows' shift up to this block's maximum: sums over exp()
            # scale down by exp(-delta), and Q = sum e*t shifts with t.
            delta = torch.where(high, raw_max - self.shift, torch.zeros_like(self.shift))
            scale = torch.exp(-delta)
            final_sums = self.S[rows.final_index].clone()
            self.Q = scale * (self.Q - delta * self.S)
            self.S = self.S * scale
            self.shift += delta
            self.rebase_cross(delta, scale[rows.final_index], final_sums)
        z -= self.shift[:, None]  # z now holds t = z - s
        # exp() below about -87 underflows, and torch's vectorised exp takes a slow path
        # there; exp(-87) = 1.6e-38 instead of 0 changes no statistic.
        torch.clamp(z, min=EXP_FLOOR, out=e).exp_()
        self.add_cross(z, e, scratch, block, bias)
        self.S += e.sum(-1)
        self.Q += torch.mul(z, e, out=scratch).sum(-1)

    def rebase_cross(self, delta: torch.Tensor, final_scale: torch.Tensor, final_sums: torch.Tensor) -> None:
        owner = self.rows.owner
        self.cross = (self.cross - delta[: self.rows.n_rows] * final_sums[owner]) * final_scale[owner]

    def add_cross(self, t_all, e, scratch, block, bias) -> None:
        rows = self.rows
        n_rows, n_p, width = rows.n_rows, rows.n_p, t_all.shape[1]
        n_layers_plus_one = n_rows // n_p
        product = torch.mul(t_all[:n_rows].view(n_layers_plus_one, n_p, width), e[rows.final_index],
                            out=scratch[:n_rows].view(n_layers_plus_one, n_p, width))
        self.cross += product.sum(-1).reshape(n_rows)

    def totals(self):
        return self.shift, self.S, self.Q, self.cross, self.counts


class LinearSums(TorchSums):
    """As ``TorchSums``, where the logits are the linear map itself: C comes at the end from
    G = sum e_final W (and B = sum e_final b), a small matrix product, instead of a pass
    over every block."""

    def __init__(self, rows: StreamRows):
        super().__init__(rows)
        self.G = torch.zeros(rows.n_p, rows.inputs.shape[1], device=rows.inputs.device)
        self.B = torch.zeros(rows.n_p, device=rows.inputs.device)

    def rebase_cross(self, delta, final_scale, final_sums) -> None:
        self.G *= final_scale[:, None]
        self.B *= final_scale

    def add_cross(self, t_all, e, scratch, block, bias) -> None:
        final_e = e[self.rows.final_index]
        # float32 sums (a half-precision head's block is widened; it is small).
        self.G += final_e @ block.float()
        if bias is not None:
            self.B += final_e @ bias.float()

    def totals(self):
        rows = self.rows
        cross = (rows.hidden.float() * self.G[rows.owner]).sum(-1) + self.B[rows.owner] - self.shift[: rows.n_rows] * self.S[rows.final_index][rows.owner]
        return self.shift, self.S, self.Q, cross, self.counts

"""Activation patching of the residual stream, batched: where an answer is caused.

For a pair of prompts that tokenise to the same length (clean: "The capital of Germany
is" -> " Berlin"; corrupted: "The capital of France is" -> " Paris") the metric is the
logit difference at the last position, LD = logit(clean answer) - logit(corrupted answer).

- ``denoise``: run the corrupted prompt with the clean run's residual written at one
  (layer, position); recovered = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted).
- ``noise``: run the clean prompt with the corrupted run's residual written at one
  (layer, position); recovered = (LD_patched - LD_clean) / (LD_corrupted - LD_clean).
- causal tracing (corruption ``gaussian``, after ROME): run the clean prompt with Gaussian
  noise added to the subject tokens' residual entering the first block (the tokens where
  the two prompts differ), several seeded samples, and restore the clean residual at one
  (layer, position); recovered = (LD_restored - LD_noised) / (LD_clean - LD_noised), LDs
  averaged over the samples.

1 means the patch alone does it. Layers use experiment 001's index: 0 is the residual
entering the first block, k the residual after block k. The residual is the raw stream,
not normalised. Many patched runs go through the model in one forward batch
(``BlockRunner.run`` of ``workflow.model.backends``), which stops after the last block; only the two answers' logits
are computed, through the model's own final norm and unembedding (the reference head of
``workflow.lens.session``, checked against the model's own logits on both prompts).
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass
from typing import Any

import torch

from workflow.lens.pairs import TokenisedPair
from workflow.model.backends import Patches
from workflow.model.head import LensHead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchingSettings:
    batch_size: int = 64  # patched runs per forward pass
    trace_samples: int = 4  # noise samples of causal tracing (0: no tracing)
    trace_noise: float = 3.0  # noise standard deviation, in units of the subject embeddings' standard deviation
    trace_seed: int = 0

    @classmethod
    def from_config(cls, patching: dict[str, Any]) -> PatchingSettings:
        trace = patching.get("trace", {})
        return cls(
            batch_size=int(patching.get("batch_size", cls.batch_size)),
            trace_samples=int(trace.get("samples", cls.trace_samples)),
            trace_noise=float(trace.get("noise", cls.trace_noise)),
            trace_seed=int(trace.get("seed", cls.trace_seed)),
        )

    def recorded(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "trace": {"samples": self.trace_samples, "noise": self.trace_noise, "seed": self.trace_seed}}


@torch.no_grad()
def logit_difference(head: LensHead, finals: torch.Tensor, first: int, second: int) -> torch.Tensor:
    """logit(first) - logit(second) [N] (float64) of residuals after the last block [N, d],
    through the model's final norm and unembedding; only those two logits are computed."""
    normed = head.normed(finals)
    linear = head.linear()
    ids = torch.tensor([first, second], device=normed.device)
    if linear is not None:
        weight, bias = linear
        logits = normed @ weight[ids].to(normed.dtype).T
        if bias is not None:
            logits = logits + bias[ids].to(normed.dtype)
    else:
        logits = head.unembed(normed)[..., ids]
    logits = head.postprocess(logits).double()
    return logits[:, 0] - logits[:, 1]


@dataclass
class Run:
    """One patched run: the unpatched run's residuals it starts from [L+1, T, d], and the
    (layer, position, vector) it writes (all at one layer here)."""

    base: torch.Tensor
    layer: int
    position: int
    value: torch.Tensor


def run_batched(blocks, input_ids: list[int], runs: list[Run], batch_size: int) -> torch.Tensor:
    """The residual after the last block at the last position [len(runs), d] of each run.

    Runs go through the model ``batch_size`` at a time, in order of their layer; a batch
    starts at its lowest layer from the unpatched residuals there (the layers below are
    the unpatched run's, so they are not computed again)."""
    order = sorted(range(len(runs)), key=lambda i: (runs[i].layer, i))
    finals: list[torch.Tensor | None] = [None] * len(runs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        first = runs[chunk[0]].layer
        patches = Patches()
        for row, index in enumerate(chunk):
            run = runs[index]
            patches.add(row, run.layer, run.position, run.value)
        hidden = torch.stack([runs[i].base[first] for i in chunk])
        out = blocks.run(input_ids, hidden, first, patches)
        for row, index in enumerate(chunk):
            finals[index] = out[row]
    return torch.stack(finals)  # type: ignore[arg-type]


def sweep(base: torch.Tensor, source: torch.Tensor) -> tuple[list[Run], list[tuple[int, int]]]:
    """One run per (layer, position) of ``base``'s residuals, writing ``source``'s there."""
    n_layers, n_tokens = base.shape[0] - 1, base.shape[1]
    cells = [(layer, position) for layer in range(n_layers + 1) for position in range(n_tokens)]
    return [Run(base, layer, position, source[layer, position]) for layer, position in cells], cells


def recovered(patched: float, baseline: float, target: float) -> float:
    """(patched - baseline) / (target - baseline): 1 where the patch alone reaches the target."""
    span = target - baseline
    return (patched - baseline) / span + 0.0 if span != 0 else math.nan


def noised_embeddings(pair: TokenisedPair, clean: torch.Tensor, std: float, settings: PatchingSettings) -> torch.Tensor:
    """The Gaussian corruption's residual entering block 0 of each sample [S, T, d]: the
    clean one plus noise at the subject positions (seeded by the pair's id, so a pair's
    noise does not depend on the other pairs)."""
    generator = torch.Generator().manual_seed(settings.trace_seed * 1_000_003 + zlib.crc32(pair.id.encode()))
    samples = clean[0].unsqueeze(0).repeat(settings.trace_samples, 1, 1)
    for sample in samples:
        noise = torch.randn(len(pair.subject_positions), clean.shape[-1], generator=generator) * std
        sample[pair.subject_positions] += noise.to(device=clean.device, dtype=clean.dtype)
    return samples


def subject_embedding_std(residuals: list[tuple[torch.Tensor, list[int]]]) -> float:
    """The standard deviation of the entries of the residual entering block 0 at the subject
    tokens of every pair (clean and corrupted prompts): the unit of the tracing noise."""
    values = torch.cat([r[0, positions].reshape(-1).double() for r, positions in residuals])
    return float(values.std())


def check_runner(blocks, pair: TokenisedPair, which: str, ids: list[int], residuals: torch.Tensor) -> None:
    """The layers run one by one must give what the model's own forward gave."""
    final = blocks.run(ids, residuals[0].unsqueeze(0), 0, Patches())[0]
    reference = residuals[-1, -1]
    scale = max(1.0, float(reference.abs().max()))
    difference = float((final.float() - reference.float()).abs().max())
    if difference > 1e-4 * scale:
        raise RuntimeError(
            f"pair {pair.id!r} ({which} prompt): running the decoder layers one by one gives a last residual "
            f"{difference:.3g} away from the model's own forward (scale {scale:.3g}): this architecture's forward does "
            "more between its layers than call them, which patching does not reproduce"
        )


# more than 6 parameters: one pair's two runs and the settings, each a different tensor or object
def patch_pair(backend, head: LensHead, pair: TokenisedPair, clean: torch.Tensor, corrupted: torch.Tensor,
               noise_std: float, settings: PatchingSettings) -> dict[str, Any]:
    """Every patched run of one pair: LD at each (direction, corruption, layer, position).

    ``clean``, ``corrupted``: the unpatched runs' residuals [L+1, T, d] (``capture``).
    Returns the baselines (LD clean, corrupted, and noised where traced) and, per
    (corruption, direction), the list of ((layer, position), LD, recovered).
    """
    started = time.perf_counter()
    blocks = backend.blocks
    check_runner(blocks, pair, "clean", pair.clean_ids, clean)
    check_runner(blocks, pair, "corrupted", pair.corrupted_ids, corrupted)
    denoise_runs, cells = sweep(corrupted, clean)
    noise_runs, _ = sweep(clean, corrupted)
    finals = [clean[-1, -1:], corrupted[-1, -1:]]
    finals.append(run_batched(blocks, pair.corrupted_ids, denoise_runs, settings.batch_size))
    finals.append(run_batched(blocks, pair.clean_ids, noise_runs, settings.batch_size))
    traced = settings.trace_samples > 0
    if traced:
        noised = blocks.run(pair.clean_ids, noised_embeddings(pair, clean, noise_std, settings), 0, Patches(), keep=True)
        finals.append(noised[-1, :, -1])
        trace_runs = [run for sample in range(settings.trace_samples) for run in sweep(noised[:, sample], clean)[0]]
        finals.append(run_batched(blocks, pair.clean_ids, trace_runs, settings.batch_size))
    # All logit differences in one call, row by row the same arithmetic: the clean residual
    # written after the last block at the last position gives LD_clean to the bit.
    lds = logit_difference(head, torch.cat(finals), pair.clean_answer_id, pair.corrupted_answer_id).tolist()
    n_cells = len(cells)
    ld_clean, ld_corrupted = lds[0], lds[1]
    denoise = lds[2 : 2 + n_cells]
    noise = lds[2 + n_cells : 2 + 2 * n_cells]
    results = {
        ("prompt", "denoise"): [(c, ld, recovered(ld, ld_corrupted, ld_clean)) for c, ld in zip(cells, denoise)],
        ("prompt", "noise"): [(c, ld, recovered(ld, ld_clean, ld_corrupted)) for c, ld in zip(cells, noise)],
    }
    baselines = {"logit_diff_clean": ld_clean, "logit_diff_corrupted": ld_corrupted}
    if traced:
        samples = settings.trace_samples
        rest = lds[2 + 2 * n_cells :]
        ld_noised = sum(rest[:samples]) / samples
        restored = [sum(rest[samples + s * n_cells + i] for s in range(samples)) / samples for i in range(n_cells)]
        results[("gaussian", "denoise")] = [(c, ld, recovered(ld, ld_noised, ld_clean)) for c, ld in zip(cells, restored)]
        baselines["logit_diff_noised"] = ld_noised
    runs = 2 * n_cells + (settings.trace_samples * (n_cells + 1) if traced else 0)
    log.info("pair %s: %d patched runs of %d tokens in %.2f s", pair.id, runs, len(pair.clean_ids), time.perf_counter() - started)
    return {"baselines": baselines, "results": results, "runs": runs}

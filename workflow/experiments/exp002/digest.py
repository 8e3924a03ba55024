"""Experiment 002's digests: what patching found on one model, compact for an LLM's prompt.

Per pair: both prompts and answers, the logit differences of the unpatched runs, and per
sweep (prompt corruption denoised and noised, Gaussian corruption restored) the recovered
fraction at the last position layer by layer, where it first reaches 0.5, the strongest
cell elsewhere, and the last layer where a subject token still carries it; beside it,
where experiment 001's lens first reads the answer. Layers are thinned evenly (the first
and last always stay) until the digest fits its budget, and it says so.
"""

from __future__ import annotations

from workflow.evaluation.text import fitted, magnitude_text, source_text
from workflow.experiments.exp002.analysis import RESTORED, ModelFacts, PairFacts

SWEEP_NAMES = {
    "prompt/denoise": "denoise (corrupted run, clean residual written)",
    "prompt/noise": "noise (clean run, corrupted residual written)",
    "gaussian/denoise": "causal trace (clean run with noised subject embeddings, clean residual restored)",
}


def _value(x: float) -> str:
    return "nan" if x != x else f"{x:.2f}"


def _pair_block(pair: PairFacts, n_layers: int, stride: int) -> str:
    lines = [
        f"### pair {pair.id}",
        f"clean {pair.clean_prompt!r} -> {pair.clean_answer!r}; corrupted {pair.corrupted_prompt!r} -> {pair.corrupted_answer!r}",
        f"tokens {pair.tokens}; subject positions {pair.subject_positions}",
        f"logit difference (clean answer minus corrupted answer): clean run {pair.logit_diff_clean:.2f}, corrupted run "
        f"{pair.logit_diff_corrupted:.2f}"
        + (f", noised run {pair.logit_diff_noised:.2f}" if pair.logit_diff_noised is not None else ""),
    ]
    if pair.lens_run:
        lines.append(
            f"experiment 001 (logit lens, probe {pair.probe}): answer first top-1 at layer {pair.lens_first_top1_layer}, "
            f"stays top-1 from layer {pair.lens_stable_top1_layer}"
        )
    if pair.tuned_run:
        lines.append(f"experiment 001 (tuned lens, probe {pair.probe}): answer first top-1 at layer {pair.tuned_first_top1_layer}")
    for warning in pair.warnings:
        lines.append(f"warning: {warning}")
    layers = [layer for layer in range(n_layers + 1) if layer % stride == 0 or layer == n_layers]
    for key, sweep in pair.sweeps.items():
        peak = sweep.peak_elsewhere
        lines.append(
            f"{SWEEP_NAMES.get(key, key)}: last position reaches {RESTORED} from layer {sweep.last_first_layer}; "
            + (f"strongest elsewhere {_value(peak.recovered)} at layer {peak.layer}, position {peak.position} ({peak.token!r}); "
               if peak else "")
            + f"a subject token carries >= {RESTORED} up to layer {sweep.subject_last_layer}"
        )
        lines.append("  recovered at the last position by layer: " + ", ".join(f"{layer}: {_value(sweep.last_curve[layer])}" for layer in layers))
    return "\n".join(lines)


def model_digest(facts: ModelFacts, max_chars: int) -> str:
    header = (
        f"## model {facts.model}\n"
        f"{facts.architecture}, {facts.n_layers} layers, d_model {facts.d_model}, {facts.dtype} on {facts.device}; "
        f"source {source_text(facts.source)}; backend {facts.backend}\n"
        f"largest lens-vs-model probability difference of the unpatched runs {magnitude_text(facts.identity_max_prob_diff)}\n"
        f"causal tracing: {facts.trace_samples} noise samples of standard deviation {facts.trace_noise_std:.3g}"
    )
    return fitted(header, lambda stride: [_pair_block(p, facts.n_layers, stride) for p in facts.pairs], facts.n_layers, max_chars)

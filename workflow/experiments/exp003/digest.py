"""Experiment 003's digests: where one model's generated tokens settle, compact for an LLM's prompt.

Per word class and lens: how many generated tokens, and the median relative depth at which
the lens first reads them and from which it keeps them as top-1; then per probe the reply
and, per token, its class, the model's probability and those layers.
"""

from __future__ import annotations

from workflow.evaluation.text import fitted, magnitude_text, source_text
from workflow.experiments.exp003.analysis import CLASSES, ModelFacts, ProbeFacts


def depth(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _probe_block(facts: ModelFacts, probe: ProbeFacts) -> str:
    lines = [f"### probe {probe.id}", f"prompt {probe.prompt!r} -> reply {probe.text!r} ({len(probe.tokens)} tokens, {probe.stopped})"]
    for t in probe.tokens:
        layers = "; ".join(f"{lens} first {t.first[lens]}, settles {t.stable[lens]}" for lens in facts.lenses)
        lines.append(f"{t.index} {t.token!r} {t.word_class} p={t.model_prob:.2f}: {layers}")
    return "\n".join(lines)


def class_lines(facts: ModelFacts) -> list[str]:
    lines = []
    for lens in facts.lenses:
        cells = [
            f"{name} {s.count} (first {depth(s.median_first)}, settles {depth(s.median_stable)})"
            for name in CLASSES if (s := facts.by_class[lens][name]).count
        ]
        lines.append(f"{lens} lens, median relative depth by class: " + "; ".join(cells))
        later = facts.content_later[lens]
        lines.append(f"{lens} lens: P(a content word settles deeper than a function word) = {depth(later)}")
    return lines


def model_digest(facts: ModelFacts, max_chars: int) -> str:
    header = "\n".join([
        f"## model {facts.model}",
        f"{facts.architecture}, {facts.n_layers} layers, d_model {facts.d_model}, {facts.dtype} on {facts.device}; "
        f"source {source_text(facts.source)}; backend {facts.backend}",
        f"{len(facts.probes)} probes, greedy, up to {facts.max_new_tokens} new tokens each: {facts.n_tokens} generated tokens",
        f"largest lens-vs-model probability difference at the last layer {magnitude_text(facts.identity_max_prob_diff)}",
        *class_lines(facts),
    ])
    # Layers are not thinned here: one line per token; the digest is cut at a line if it must be.
    return fitted(header, lambda stride: [_probe_block(facts, p) for p in facts.probes], 1, max_chars)

"""Experiment 005's digests: per task and lens, compact for an LLM's prompt.

Per task: the languages, how many concepts were kept and scored, and per lens what the rule
finds (the first layer where the concept and the target word are readable, the layers where
English dominates) and, per layer, the mean probabilities of the target, English and source
words and of the concept with their intervals. Layers are thinned evenly (the first and last
always stay) until the digest fits its budget, and it says so.
"""

from __future__ import annotations

from workflow.evaluation.text import fitted, identity_text, source_text
from workflow.experiments.exp005.analysis import BOOTSTRAP_SAMPLES, DISAGREE, LEVEL, READABLE, ModelFacts, TaskFacts


def layer_or_never(layer: int | None) -> str:
    return "never" if layer is None else str(layer)


def span(layers: list[int]) -> str:
    """Layers as runs: "3-7, 12"; "none"."""
    if not layers:
        return "none"
    runs, start = [], layers[0]
    for previous, layer in zip(layers, layers[1:] + [None]):
        if layer != previous + 1:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
            start = layer
    return ", ".join(runs)


def words_text(task: TaskFacts) -> str:
    w = task.words
    dropped = "; ".join(f"{reason}: {n}" for reason, n in w.items() if reason not in ("kept", "scored", "whole_words"))
    return (f"{w['kept']} of 100 concepts kept, {w['scored']} scored ({w['whole_words']} with every word one token)"
            + (f"; dropped: {dropped}" if dropped else ""))


def rule_text() -> str:
    return (
        f"Rule: a word (or the concept, its words' probabilities summed) is readable at a layer where the lower end of the "
        f"{LEVEL:.0%} bootstrap interval ({BOOTSTRAP_SAMPLES} resamples of concepts) of its mean probability is at least "
        f"{READABLE:g}; the model does a task where its target word is readable at its own output (the logit lens at the "
        f"last layer), and only the tasks it does are read for concepts; there the concept is read before its word from "
        f"its first readable layer up to the target word's (to the output where the lens never reads the target word); "
        f"English dominates where the English word is readable and its "
        f"interval lies above the target word's; lenses disagree where their first target-readable layers differ by more "
        f"than {DISAGREE:.0%} of the depth."
    )


def _task_block(facts: ModelFacts, task: TaskFacts, stride: int) -> str:
    languages = f"{task.source} -> {task.target}" if task.translation else task.target
    lines = [f"### task {task.id} ({task.kind}, {languages})", words_text(task)]
    for lens, r in task.readings.items():
        lines.append(
            f"{lens} lens: concept readable from layer {layer_or_never(r.concept_layer)}, target word from layer "
            f"{layer_or_never(r.word_layer)}; concept before word at layers {span(r.before_word())}; English dominates at "
            f"layers {span(r.english_dominant())}"
        )
        curves = r.curves
        shown = [layer for i, layer in enumerate(curves["target"].layers)
                 if i % stride == 0 or layer == curves["target"].layers[-1]]
        for layer in shown:
            cells = []
            for measure, curve in curves.items():
                mean, low, high = curve.at(layer)
                cells.append(f"{measure} {mean:.3f} [{low:.3f}, {high:.3f}]")
            lines.append(f"  layer {layer}: " + "; ".join(cells))
    return "\n".join(lines)


def model_digest(facts: ModelFacts, max_chars: int) -> str:
    header = "\n".join([
        f"## model {facts.model}",
        f"{facts.architecture}, {facts.n_layers} layers, d_model {facts.d_model}, {facts.dtype} on {facts.device}; "
        f"source {source_text(facts.source)}; backend {facts.backend}",
        f"lenses: {', '.join(facts.lenses)}; words scored by their {facts.scoring} token; {facts.demonstrations} demonstrations "
        f"per prompt; patchscope inspection prompt {facts.patchscope['prompt']!r}, written at position "
        f"{facts.patchscope['position']}, target layer {'the source layer' if facts.patchscope['target_layer'] is None else facts.patchscope['target_layer']}",
        f"at the last layer the logit lens reproduces the model's probabilities {identity_text(facts.identity_max_prob_diff)}",
        rule_text(),
        "Per layer: mean probability over concepts [95% interval].",
    ])
    return fitted(header, lambda stride: [_task_block(facts, t, stride) for t in facts.tasks], facts.n_layers, max_chars)

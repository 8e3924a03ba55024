"""Experiment 002's offline analyst: the sections of its three evaluations.

Every sentence is a figure computed from the recorded outputs
(``workflow.experiments.exp002.analysis``) put into words by fixed rules: where recovery
concentrates (which token, which depth), and how that compares with where experiment
001's lens first reads the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median

from workflow.evaluation.text import code, counted, escaped, identity_text, layer_text, layers_text, table, tok
from workflow.experiments.exp002.analysis import RESTORED, ModelFacts, PairFacts, SweepFacts, relative

DENOISE, NOISE, TRACE = "prompt/denoise", "prompt/noise", "gaussian/denoise"


def _v(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


def _depth(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _sweep(pair: PairFacts, key: str) -> SweepFacts | None:
    return pair.sweeps.get(key)


def _first(pair: PairFacts, key: str) -> int | None:
    sweep = _sweep(pair, key)
    return sweep.last_first_layer if sweep else None


# ---------------------------------------------------------------- single model


# The answer to the experiment's question, first in every evaluation: where patching moves the
# answer (which position, from or up to which layer of how many), set beside where experiment
# 001's lenses read it. Every figure is one the document's tables hold.

RESTORE_RULE = (
    f"Restored means recovered >= {RESTORED}: one clean residual vector, written at one (layer, position) of the corrupted "
    "run, brings back at least half of the logit difference between the clean and the corrupted answer (denoising). "
    "Layer 0 is the embedding, layer L the output."
)


def _lens_layer(p: PairFacts, lens: str) -> int | None:
    return p.lens_first_top1_layer if lens == "logit" else p.tuned_first_top1_layer


def _lenses(f: ModelFacts) -> list[str]:
    linked = [p for p in f.pairs if p.lens_run]
    return (["logit"] if linked else []) + (["tuned"] if any(p.tuned_run for p in linked) else [])


def _where(f: ModelFacts) -> str:
    """Where patching moves the answer, one model, in words."""
    swept = [p for p in f.pairs if DENOISE in p.sweeps]
    subject = [p.sweeps[DENOISE].subject_last_layer for p in swept if p.sweeps[DENOISE].subject_last_layer is not None]
    last = [p.sweeps[DENOISE].last_first_layer for p in swept if p.sweeps[DENOISE].last_first_layer is not None]
    n = len(swept)
    text = f"In {escaped(f.model)} ({f.n_layers} layers, {counted(n, 'pair')} patched), patching restores the answer "
    parts = []
    if subject:
        parts.append(f"at a subject token up to {layers_text(subject, f.n_layers, 'pair')}"
                     + (f" ({len(subject)} of {n} pairs)" if len(subject) < n else ""))
    else:
        parts.append("at no subject token on any pair")
    if last:
        parts.append(f"at the last position, from {layers_text(last, f.n_layers, 'pair')}"
                     + (f" ({len(last)} of {n} pairs)" if len(last) < n else ""))
    text += "; ".join(parts) + "."
    adjacent = sum(
        1 for p in swept
        if p.sweeps[DENOISE].subject_last_layer is not None and p.sweeps[DENOISE].last_first_layer is not None
        and p.sweeps[DENOISE].last_first_layer == p.sweeps[DENOISE].subject_last_layer + 1
    )
    if subject and last:
        text += f" The fact passes from the subject to the last position between adjacent layers on {adjacent} of {n} pairs."
    for lens in _lenses(f):
        linked = [p for p in swept if p.lens_run and (lens == "logit" or p.tuned_run)]
        read = [p for p in linked if _lens_layer(p, lens) is not None]
        at = [p for p in read if p.sweeps[DENOISE].last_first_layer == _lens_layer(p, lens)]
        later = [p for p in read if p.sweeps[DENOISE].last_first_layer is not None and _lens_layer(p, lens) > p.sweeps[DENOISE].last_first_layer]
        earlier = [p for p in read if p.sweeps[DENOISE].last_first_layer is not None and _lens_layer(p, lens) < p.sweeps[DENOISE].last_first_layer]
        if not read:
            text += f" Experiment 001's {lens} lens never reads the answer as top-1 on these pairs' prompts."
            continue
        text += (
            f" Experiment 001's {lens} lens reads the answer as top-1 at the last position on {len(read)} of {len(linked)} pairs, "
            f"first at {layers_text([_lens_layer(p, lens) for p in read], f.n_layers, 'pair')}: at the layer from which the "
            f"last position restores it on {len(at)}, later on {len(later)}, earlier on {len(earlier)}."
        )
    return text


def _single_summary(f: ModelFacts) -> str:
    n = len(f.pairs)
    flips = sum(p.logit_diff_clean > 0 > p.logit_diff_corrupted for p in f.pairs)
    return (
        _where(f)
        + "\n\n"
        + RESTORE_RULE
        + f" {escaped(f.model)} is a {escaped(f.architecture)}; every layer x position was patched in both directions. On {flips} of {n} "
        "pairs the model prefers the clean answer on the clean prompt and the corrupted answer on the corrupted one (logit "
        "difference positive, then negative), so those pairs isolate one fact. The unpatched runs through the model's own "
        f"final norm and unembedding reproduce its probabilities {identity_text(f.identity_max_prob_diff)}, so every logit "
        "difference is the model's. Per pair: the sections 'Where patching restores the answer' and 'Lens and patching'."
    )


def _single_where(f: ModelFacts) -> str:
    rows = []
    for p in f.pairs:
        d = p.sweeps.get(DENOISE)
        n = p.sweeps.get(NOISE)
        peak = d.peak_elsewhere if d else None
        rows.append([
            escaped(p.id),
            f"{p.logit_diff_clean:.2f} / {p.logit_diff_corrupted:.2f}",
            layer_text(d.subject_last_layer if d else None, f.n_layers),
            layer_text(d.last_first_layer if d else None, f.n_layers),
            layer_text(n.last_first_layer if n else None, f.n_layers),
            f"{_v(peak.recovered)} at layer {peak.layer}, {tok(p.tokens[peak.position])}" if peak else "n/a",
        ])
    text = table(
        ["pair", "LD clean / corrupted", f"denoise: a subject token >= {RESTORED} up to layer (depth)",
         f"denoise: last position >= {RESTORED} from layer (depth)",
         f"noise: last position >= {RESTORED} from layer (depth)", "strongest denoise elsewhere"],
        rows,
    )
    return (
        text
        + "\n\nLD is logit(clean answer) - logit(corrupted answer) at the last position; recovered is the fraction of the "
        "clean-to-corrupted change that one patched (layer, position) brings back (denoise) or brings about (noise). "
        "At the last layer the last position alone restores exactly 1 in both directions by construction; the informative "
        "figure is how early it does."
    )


def _single_subject(f: ModelFacts) -> str:
    lines = []
    for p in f.pairs:
        d = p.sweeps.get(DENOISE)
        if d is None:
            continue
        subject_tokens = ", ".join(tok(p.tokens[i]) for i in p.subject_positions)
        if d.subject_last_layer is None:
            lines.append(f"- {code(p.id)}: no single subject position ({subject_tokens}) restores {RESTORED} at any layer.")
            continue
        handoff = d.last_first_layer
        if handoff is None:
            relation = ""
        elif handoff <= d.subject_last_layer:
            relation = " (they overlap: the fact is at the last position before the subject stops mattering)"
        elif handoff == d.subject_last_layer + 1:
            relation = " (a direct hand-over between two adjacent layers)"
        else:
            relation = f" (a gap of {handoff - d.subject_last_layer - 1} layer(s) where no single position carries it)"
        lines.append(
            f"- {code(p.id)}: the subject ({subject_tokens}) carries the fact up to layer {d.subject_last_layer}"
            + (f"; the last position carries it from layer {handoff}" if handoff is not None else "")
            + relation
            + "."
        )
    layers = [p.sweeps[DENOISE].subject_last_layer for p in f.pairs if DENOISE in p.sweeps and p.sweeps[DENOISE].subject_last_layer is not None]
    handoffs = [_first(p, DENOISE) for p in f.pairs if _first(p, DENOISE) is not None]
    summary = ""
    if layers and handoffs:
        summary = (
            f"\n\nAcross pairs the subject stops carrying the fact at a median layer {median(layers):g} and the last position "
            f"starts at a median layer {median(handoffs):g} of {f.n_layers}: the information moves from the subject "
            "token to the position that predicts in that band (between positions, only attention can move it)."
        )
    return "\n".join(lines) + summary


def _single_trace(f: ModelFacts) -> str:
    traced = [p for p in f.pairs if TRACE in p.sweeps]
    if not traced:
        return "Causal tracing was not run (patching.trace.samples is 0)."
    rows = []
    for p in traced:
        t = p.sweeps[TRACE]
        peak = t.peak_elsewhere
        rows.append([
            escaped(p.id),
            f"{p.logit_diff_clean:.2f} / {_v(p.logit_diff_noised) if p.logit_diff_noised is not None else 'n/a'}",
            layer_text(t.last_first_layer, f.n_layers),
            f"{_v(peak.recovered)} at layer {peak.layer}, {tok(p.tokens[peak.position])}" if peak else "n/a",
            str(t.subject_last_layer) if t.subject_last_layer is not None else "never",
        ])
    weak = [p.id for p in traced if p.logit_diff_noised is not None and p.logit_diff_clean - p.logit_diff_noised < 1.0]
    text = table(
        ["pair", "LD clean / noised", f"last position >= {RESTORED} from layer", "strongest restore elsewhere", f"subject >= {RESTORED} up to layer"],
        rows,
    )
    text += (
        f"\n\nThe noise ({f.trace_samples} seeded samples, standard deviation {f.trace_noise_std:.3g}: three times that of "
        "the subject tokens' embeddings) corrupts the subject without naming another one, so unlike the prompt corruption it "
        "does not push towards a particular wrong answer."
    )
    if weak:
        text += (
            " On " + ", ".join(code(i) for i in weak) + " the noise moves the logit difference by less than 1 nat, so "
            "recovered there is a ratio of small numbers."
        )
    return text


def _single_lens(f: ModelFacts) -> str:
    linked = [p for p in f.pairs if p.lens_run]
    if not linked:
        return "No pair names an experiment-001 probe whose outputs were there, so nothing is compared with the lens."
    tuned = any(p.tuned_run for p in linked)
    rows = []
    for p in linked:
        rows.append([
            escaped(p.id),
            layer_text(p.lens_first_top1_layer, f.n_layers),
            *([layer_text(p.tuned_first_top1_layer, f.n_layers) if p.tuned_run else "n/a"] if tuned else []),
            layer_text(_first(p, DENOISE), f.n_layers),
            layer_text(_first(p, TRACE), f.n_layers) if TRACE in p.sweeps else "n/a",
        ])
    text = table(["pair", "001 logit lens: answer first top-1", *(["001 tuned lens: answer first top-1"] if tuned else []),
                  "patching: last position restores from", "tracing: last position from"], rows)
    ahead = [p.id for p in linked if p.lens_first_top1_layer is not None and _first(p, DENOISE) is not None and _first(p, DENOISE) < p.lens_first_top1_layer]
    same = [p.id for p in linked if p.lens_first_top1_layer is not None and _first(p, DENOISE) == p.lens_first_top1_layer]
    behind = [p.id for p in linked if p.lens_first_top1_layer is not None and _first(p, DENOISE) is not None and _first(p, DENOISE) > p.lens_first_top1_layer]
    never = [p.id for p in linked if p.lens_first_top1_layer is None]
    text += (
        "\n\nPatching finds where the answer is *caused* at the last position; the lens where it becomes *readable* as the "
        "top-1 token. The sentences below compare the logit lens (the tuned lens's comparison is in the Summary)."
    )
    for ids, finding in (
        (ahead, "the last position already carries the deciding information before the lens reads the answer as "
                "top-1: the information is there before it is decodable by the unembedding."),
        (same, "the lens first reads the answer at the very layer from which the last position alone carries it: what "
               "decides the answer is readable as soon as it arrives there."),
        (behind, "the lens reads the answer before the last position alone carries the deciding information: the "
                 "reading is not yet the cause of the output."),
    ):
        if ids:
            text += " On " + ", ".join(code(i) for i in ids) + " " + finding
    if never:
        text += " On " + ", ".join(code(i) for i in never) + " the lens never reads the answer as top-1, while patching still locates it."
    return text


def _caveats(models: list[ModelFacts]) -> str:
    notes = [
        f"- {sum(len(m.pairs) for m in models)} pair(s) in all: positions and depths are per pair, not statistics over many facts.",
        "- Patching one (layer, position) at a time measures what that residual vector alone carries; information spread "
        "over several positions at one layer shows as partial recovery everywhere.",
        "- The prompt corruption swaps one subject for another of the same length: recovery can reflect 'Germany, not France' "
        "rather than knowledge of Berlin.",
    ]
    warned = [(m.model, p.id, w) for m in models for p in m.pairs for w in p.warnings]
    for model, pair, warning in warned:
        notes.append(f"- {escaped(model)}, {code(pair)}: {escaped(warning)}.")
    for m in models:
        if m.skipped:
            notes.append(
                f"- {escaped(m.model)}: {len(m.skipped)} pair(s) made from the probe set had no partner of their token length and "
                "were not patched: " + ", ".join(code(pid) for pid, _ in m.skipped[:12])
                + (f" and {len(m.skipped) - 12} more" if len(m.skipped) > 12 else "") + "."
            )
    return "\n".join(notes)


SINGLE: dict[str, Callable[[ModelFacts], str]] = {
    "summary": _single_summary,
    "where patching restores the answer": _single_where,
    "subject and last position": _single_subject,
    "causal tracing": _single_trace,
    "lens and patching": _single_lens,
    "caveats": lambda f: _caveats([f]),
}


# ---------------------------------------------------------------- across models


def _cross_summary(models: list[ModelFacts]) -> str:
    text = " ".join(_where(m) for m in models)
    if len(models) > 1:
        text += " " + _compared(models)
    return text + "\n\n" + RESTORE_RULE + " Per pair and model: the section 'By relative depth'."


def _compared(models: list[ModelFacts]) -> str:
    """Which model moves the fact to the last position earlier, in relative depth."""
    medians = {m.model: _median([relative(_first(p, DENOISE), m.n_layers) for p in m.pairs]) for m in models}
    known = {k: v for k, v in medians.items() if v is not None}
    if len(known) < 2:
        return ""
    order = sorted(known, key=lambda k: (known[k], k))
    if known[order[0]] == known[order[-1]]:
        return f"In relative depth (layer / number of layers) the models move the fact to the last position at the same median depth ({_depth(known[order[0]])})."
    return (
        f"In relative depth (layer / number of layers), {escaped(order[0])} moves the fact to the last position "
        f"{'earlier' if len(order) == 2 else 'earliest'} (median {_depth(known[order[0]])}, against "
        + ", ".join(f"{_depth(known[k])} for {escaped(k)}" for k in order[1:]) + ")."
    )


def _cross_depth(models: list[ModelFacts]) -> str:
    ids = sorted({p.id for m in models for p in m.pairs})
    tuned = any(p.tuned_run for m in models for p in m.pairs)
    rows = []
    for pair_id in ids:
        for m in models:
            p = next((q for q in m.pairs if q.id == pair_id), None)
            if p is None:
                continue
            d = p.sweeps.get(DENOISE)
            rows.append([
                escaped(pair_id), escaped(m.model),
                layer_text(d.subject_last_layer if d else None, m.n_layers),
                layer_text(d.last_first_layer if d else None, m.n_layers),
                layer_text(p.lens_first_top1_layer, m.n_layers) if p.lens_run else "n/a",
                *([layer_text(p.tuned_first_top1_layer, m.n_layers) if p.tuned_run else "n/a"] if tuned else []),
            ])
    return table(
        ["pair", "model", f"a subject token >= {RESTORED} up to layer (depth)", f"last position >= {RESTORED} from layer (depth)",
         "001 logit lens: answer first top-1", *(["001 tuned lens: answer first top-1"] if tuned else [])],
        rows,
    ) + (
        "\n\nLayers with their relative depth (layer / number of layers) in brackets: "
        + ", ".join(f"{escaped(m.model)} has {m.n_layers} layers" for m in models)
        + f". Denoising (clean into corrupted); 'up to': the last layer where a subject token alone restores {RESTORED}; "
        "'from': the first layer where the last position does; the lenses: where experiment 001 first reads the answer as top-1."
    )


def _cross_differences(models: list[ModelFacts]) -> str:
    if len(models) < 2:
        return (f"One model only ({escaped(models[0].model) if models else 'none'}): nothing to compare. Add a second model under "
                "`models:` in the config to compare the depths at which they move the fact.")
    medians = {escaped(m.model): _median([relative(_first(p, DENOISE), m.n_layers) for p in m.pairs]) for m in models}
    known = {k: v for k, v in medians.items() if v is not None}
    if len(known) < 2:
        return "The last position restores the answer in fewer than two models; no depth comparison."
    early = min(known, key=lambda k: (known[k], k))
    late = max(known, key=lambda k: (known[k], k))
    if known[early] == known[late]:
        return f"The models move the fact to the last position at the same median relative depth ({_depth(known[early])})."
    return (
        f"{early} moves the fact to the last position earliest (median depth {_depth(known[early])}), {late} latest "
        f"({_depth(known[late])}). Depth is relative: the models have " + ", ".join(f"{m.n_layers}" for m in models) + " layers."
    )


CROSS: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _cross_summary,
    "by relative depth": _cross_depth,
    "differences between models": _cross_differences,
    "caveats": _caveats,
}


# ---------------------------------------------------------------- method


def _meta_answer(models: list[ModelFacts]) -> str:
    parts = []
    for m in models:
        swept = [p for p in m.pairs if DENOISE in p.sweeps]
        subject = [p.sweeps[DENOISE].subject_last_layer for p in swept if p.sweeps[DENOISE].subject_last_layer is not None]
        last = [p.sweeps[DENOISE].last_first_layer for p in swept if p.sweeps[DENOISE].last_first_layer is not None]
        parts.append(
            f"in {escaped(m.model)} a subject token restores the answer up to {layers_text(subject, m.n_layers, 'pair')} and the "
            f"last position from {layers_text(last, m.n_layers, 'pair')}"
        )
    return f"The answer this critique weighs (restored: recovered >= {RESTORED}): " + "; ".join(parts) + "."


def _meta_summary(models: list[ModelFacts]) -> str:
    return _meta_answer(models) + "\n\n" + (
        f"Experiment 002 patches the raw residual stream of {len(models)} model(s) one (layer, position) at a time, in both "
        "directions between a clean and a corrupted prompt, and traces with Gaussian noise on the subject: a causal "
        "complement to experiment 001's lens, which only shows what is readable."
    )


def _meta_measures(models: list[ModelFacts]) -> str:
    return (
        "Recovered is a normalised logit difference: 0 = the patch changes nothing, 1 = it alone moves the model all the way. "
        "Denoising asks what is sufficient (one clean vector in a corrupted run), noising what is necessary (one corrupted "
        "vector in a clean run); the two disagree where a fact is stored redundantly. The logit difference is computed from "
        "the two answers' logits only, through the model's own final norm and unembedding, checked against the model's output."
    )


def _meta_threats(models: list[ModelFacts]) -> str:
    small = [(m.model, p.id) for m in models for p in m.pairs if abs(p.logit_diff_clean - p.logit_diff_corrupted) < 1.0]
    text = (
        "- Single-position patches miss distributed representations; patching windows of layers (as ROME does for MLP and "
        "attention outputs) would show them.\n"
        "- Prompt pairs must tokenise to the same length, which restricts which subjects can be compared.\n"
        "- Gaussian noise puts activations off the model's distribution; its scale (3x the embedding spread) is a convention."
    )
    if small:
        text += "\n- Small clean-to-corrupted gaps (under 1 nat) make recovered unstable: " + ", ".join(f"{escaped(m)} {code(p)}" for m, p in small) + "."
    return text


def _meta_next(models: list[ModelFacts]) -> str:
    return (
        "- Patch attention and MLP outputs separately (which component moves the subject's information to the last position).\n"
        "- Many pairs per relation with intervals, instead of one pair per fact.\n"
        "- Patch through the tuned lens's translators to ask where the tuned lens's early readings are causal."
    )


META: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _meta_summary,
    "what patching measures": _meta_measures,
    "threats to validity": _meta_threats,
    "next experiments": _meta_next,
}

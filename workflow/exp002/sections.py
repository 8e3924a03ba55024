"""Experiment 002's offline analyst: the sections of its three evaluations.

Every sentence is a figure computed from the recorded outputs
(``workflow.exp002.analysis``) put into words by fixed rules: where recovery
concentrates (which token, which depth), and how that compares with where experiment
001's lens first reads the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median

from workflow.evaluation.text import code, escaped, identity_text, layer_text, table, tok
from workflow.exp002.analysis import RESTORED, ModelFacts, PairFacts, SweepFacts, relative

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


def _single_summary(f: ModelFacts) -> str:
    n = len(f.pairs)
    handoff = _median([relative(_first(p, DENOISE), f.n_layers) for p in f.pairs])
    subject = _median([relative(p.sweeps[DENOISE].subject_last_layer, f.n_layers) for p in f.pairs if DENOISE in p.sweeps])
    flips = sum(p.logit_diff_clean > 0 > p.logit_diff_corrupted for p in f.pairs)
    text = (
        f"{escaped(f.model)} ({escaped(f.architecture)}, {f.n_layers} layers) was patched on {n} pair(s) of prompts, every layer x position, "
        f"both directions. On {flips} of {n} pairs the model prefers the clean answer on the clean prompt and the "
        "corrupted answer on the corrupted one (logit difference positive, then negative), so the pair isolates one fact."
    )
    if subject is not None:
        text += f" Writing the clean residual at a subject token restores at least {RESTORED} of the logit difference up to a median relative depth of {_depth(subject)};"
    if handoff is not None:
        text += f" at the last position it does so from a median relative depth of {_depth(handoff)}."
    text += (
        f" The unpatched runs through the model's own final norm and unembedding reproduce its probabilities "
        f"{identity_text(f.identity_max_prob_diff)}, so every logit difference is the model's."
    )
    return text


def _single_where(f: ModelFacts) -> str:
    rows = []
    for p in f.pairs:
        d = p.sweeps.get(DENOISE)
        n = p.sweeps.get(NOISE)
        peak = d.peak_elsewhere if d else None
        rows.append([
            escaped(p.id),
            f"{p.logit_diff_clean:.2f} / {p.logit_diff_corrupted:.2f}",
            layer_text(d.last_first_layer if d else None, f.n_layers),
            layer_text(n.last_first_layer if n else None, f.n_layers),
            f"{_v(peak.recovered)} at layer {peak.layer}, {tok(p.tokens[peak.position])}" if peak else "n/a",
        ])
    text = table(
        ["pair", "LD clean / corrupted", f"denoise: last position >= {RESTORED} from layer (depth)",
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
            "token to the position that predicts, through attention, in that band."
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
    rows = []
    for p in linked:
        rows.append([
            escaped(p.id),
            layer_text(p.lens_first_top1_layer, f.n_layers),
            layer_text(_first(p, DENOISE), f.n_layers),
            layer_text(_first(p, TRACE), f.n_layers) if TRACE in p.sweeps else "n/a",
        ])
    text = table(["pair", "001 lens: answer first top-1", "patching: last position restores from", "tracing: last position from"], rows)
    ahead = [p.id for p in linked if p.lens_first_top1_layer is not None and _first(p, DENOISE) is not None and _first(p, DENOISE) < p.lens_first_top1_layer]
    same = [p.id for p in linked if p.lens_first_top1_layer is not None and _first(p, DENOISE) == p.lens_first_top1_layer]
    behind = [p.id for p in linked if p.lens_first_top1_layer is not None and _first(p, DENOISE) is not None and _first(p, DENOISE) > p.lens_first_top1_layer]
    never = [p.id for p in linked if p.lens_first_top1_layer is None]
    text += (
        "\n\nPatching finds where the answer is *caused* at the last position; the lens where it becomes *readable* as the "
        "top-1 token."
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
    parts = []
    for m in models:
        handoff = _median([relative(_first(p, DENOISE), m.n_layers) for p in m.pairs])
        parts.append(f"{escaped(m.model)} ({m.n_layers} layers): last position restores from a median depth of {_depth(handoff)}")
    return "Patched on the same pairs: " + "; ".join(parts) + "."


def _cross_depth(models: list[ModelFacts]) -> str:
    ids = sorted({p.id for m in models for p in m.pairs})
    rows = []
    for pair_id in ids:
        row = [escaped(pair_id)]
        for m in models:
            p = next((q for q in m.pairs if q.id == pair_id), None)
            if p is None:
                row.append("n/a")
                continue
            d = p.sweeps.get(DENOISE)
            lens = ("never" if p.lens_first_top1_layer is None else _depth(relative(p.lens_first_top1_layer, m.n_layers))) if p.lens_run else "n/a"
            row.append(
                f"subject to {_depth(relative(d.subject_last_layer, m.n_layers) if d else None)}, last from "
                f"{_depth(relative(d.last_first_layer, m.n_layers) if d else None)}, lens {lens}"
            )
        rows.append(row)
    return table(["pair", *[escaped(m.model) for m in models]], rows) + (
        "\n\nRelative depth = layer / number of layers. 'subject to': the last depth where a subject token alone restores "
        f"{RESTORED}; 'last from': the first depth where the last position does; 'lens': where experiment 001's logit lens "
        "first reads the answer as top-1."
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


def _meta_summary(models: list[ModelFacts]) -> str:
    return (
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

"""Experiment 001's offline analyst: the sections of its three evaluations.

Every sentence is a figure computed from the recorded outputs
(``workflow.experiments.exp001.analysis``) put into words by fixed rules, so the same outputs
always give the same document (``workflow.evaluation.analyst.write`` puts the
sections together under the template's headings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from statistics import median

from workflow.evaluation.text import code, counted, escaped, identity_text, layers_text
from workflow.evaluation.text import layer_text as _layer
from workflow.evaluation.text import nats as _nats
from workflow.evaluation.text import pct as _pct
from workflow.evaluation.text import table as _table
from workflow.evaluation.text import tok as _tok
from workflow.experiments.exp001.analysis import (
    BANDS,
    CONFIDENT_NATS,
    ModelFacts,
    ProbeFacts,
    answer_peak,
    calibration_fit,
    displaced,
    lowered_at_the_end,
    relative,
    reverse_pairs,
)
from workflow.experiments.exp001.digest import DETAIL_PROBES, statistics_lines


def _shown(probes: list, what: str = "probes") -> tuple[list, str]:
    """The first DETAIL_PROBES of ``probes`` for a per-probe table, and a note when more exist."""
    if len(probes) <= DETAIL_PROBES:
        return probes, ""
    return probes[:DETAIL_PROBES], (
        f"\n\nThe table shows the first {DETAIL_PROBES} of {len(probes)} {what}; the section 'Statistics' covers all "
        "of them, and the records hold every one."
    )


def _listed(items: list[str]) -> str:
    """Items joined with commas, at most DETAIL_PROBES of them named."""
    if len(items) <= DETAIL_PROBES:
        return ", ".join(items)
    return ", ".join(items[:DETAIL_PROBES]) + f" and {len(items) - DETAIL_PROBES} more"


def _single_statistics(f: ModelFacts) -> str:
    intervals = (
        "Intervals are 95%: Wilson score intervals for accuracies, Newcombe's paired interval for the forward − reverse "
        "difference, a t interval for the mean log-probability difference. Depths are relative (layer / number of "
        "layers) over the probes whose answer becomes top-1 at all. Calibration bins the final top-1 probability in "
        "ten equal-width bins; the temperature is the one of the recorded grid with the lowest error."
    )
    # The relations' names are the user's text (statistics_lines writes them as they are, for the digest).
    shown = replace(f, statistics={**f.statistics, "relations": {escaped(k): v for k, v in f.statistics["relations"].items()}})
    return "\n".join(f"- {line}" for line in statistics_lines(shown)) + "\n\n" + intervals


def _cross_statistics(models: list[ModelFacts]) -> str:
    def cell_depth(f: ModelFacts, lens: str = "logit") -> str:
        if lens not in f.statistics["depth"]:
            return "—"
        depth = f.statistics["depth"][lens]
        return "never" if depth is None else f"{depth.median:.2f} ({depth.q1:.2f}–{depth.q3:.2f})"

    def cell_direction(f: ModelFacts) -> str:
        d = f.statistics.get("directions")
        return "—" if not d else f"{d['difference'].estimate:+.2f} ({d['difference'].low:+.2f} to {d['difference'].high:+.2f})"

    def cell_calibration(f: ModelFacts) -> str:
        c = f.statistics.get("calibration")
        if not c:
            return "—"
        fit = calibration_fit(f.temperatures, c["temperature"], f.statistics["accuracy"].estimate)
        return f"{c['ece']:.3f}; " + ("degenerate" if fit == "degenerate" else f"{c['ece_at_temperature']:.3f} at T = {c['temperature']:g}"
                                       + (" (grid's bound)" if fit == "bound" else ""))

    tuned = any("tuned" in f.statistics["depth"] for f in models)
    table = _table(
        ["model", "n", "accuracy (95% CI)", "logit lens: first top-1 depth, median (IQR)",
         *(["tuned lens: first top-1 depth, median (IQR)"] if tuned else []), "forward − reverse accuracy (95% CI)",
         "ECE; lowest (temperature)"],
        [
            [escaped(f.model), str(f.statistics["n"]), f.statistics["accuracy"].text(percent=True), cell_depth(f),
             *([cell_depth(f, "tuned")] if tuned else []), cell_direction(f), cell_calibration(f)]
            for f in models
        ],
    )
    notes = []
    if len(models) > 1:
        ranked = sorted(models, key=lambda f: (-f.statistics["accuracy"].estimate, f.model))
        a, b = ranked[0], ranked[1]
        if a.statistics["accuracy"].low > b.statistics["accuracy"].high:
            notes.append(f"{escaped(a.model)}'s accuracy interval lies above {escaped(b.model)}'s: the difference is larger than sampling noise on this probe set.")
        else:
            notes.append(
                f"The accuracy intervals of {escaped(a.model)} and {escaped(b.model)} overlap: on this probe set the difference in accuracy "
                "could be sampling noise."
            )
    for f in models:
        d = f.statistics.get("directions")
        if d and not (d["difference"].low <= 0 <= d["difference"].high):
            side = "forward" if d["difference"].estimate > 0 else "reverse"
            notes.append(f"{escaped(f.model)} is more accurate in the {side} direction, and the paired interval excludes zero.")
    return table + ("\n\n" + " ".join(notes) if notes else "")

def _median_depth(layers: list[int | None], n_layers: int) -> float | None:
    values = [relative(x, n_layers) for x in layers if x is not None]
    return median(values) if values else None


# ---------------------------------------------------------------- single model


# The answer to the experiment's question, first in every evaluation: at which layer (of how
# many) the answer becomes the top-1 reading and stays there to the output, through each lens,
# and what the last layers do to it. Every figure is one the document's tables hold.

ANSWER_RULE = (
    "The answer counts as read at a layer when it is the lens's top-1 token at the prompt's last position (its first "
    "token, for answers of several); 'stays' means top-1 from that layer to the output. Layer 0 is the embedding, "
    "layer L the output."
)


def _layers(p: ProbeFacts, lens: str) -> tuple[int | None, int | None]:
    """Where ``lens`` first reads the probe's answer as top-1, and from which layer it stays."""
    return (p.first_top1_layer, p.stable_top1_layer) if lens == "logit" else p.lens_layers.get(lens, (None, None))


def _stays(f: ModelFacts, probes: list[ProbeFacts], lens: str) -> list[int]:
    return [layer for p in probes if (layer := _layers(p, lens)[1]) is not None]


def _firsts(probes: list[ProbeFacts], lens: str) -> list[int]:
    return [layer for p in probes if (layer := _layers(p, lens)[0]) is not None]


def _lens_names(f: ModelFacts) -> list[str]:
    return [lens for lens in ("logit", "tuned", "patchscope") if lens in f.lenses]


def _settles(f: ModelFacts) -> str:
    """Where the answer becomes top-1 and stays, through each lens, on the probes the model answers."""
    correct = [p for p in f.probes if p.correct]
    text = f"the model's own output (its final top-1 token) is the expected answer on {f.n_correct} of {len(f.probes)} probes"
    if not correct:
        return text
    parts = []
    for lens in _lens_names(f):
        layers = _stays(f, correct, lens)
        if layers:
            part = f"through the {lens} lens from {layers_text(layers, f.n_layers)}"
            if len(layers) < len(correct):
                part += f" (on {len(correct) - len(layers)} of them this lens does not keep it to the output)"
        else:
            part = f"through the {lens} lens on none of them"
        parts.append(part)
    return text + "; on those, the answer becomes top-1 and stays there to the output " + "; ".join(parts)


def _elsewhere(f: ModelFacts) -> str:
    """Where the lenses read the answer as top-1 on the probes the model does not answer."""
    wrong = [p for p in f.probes if not p.correct]
    if not wrong:
        return ""
    parts = []
    for lens in _lens_names(f):
        layers = _firsts(wrong, lens)
        parts.append(
            f"the {lens} lens reads it as top-1 part-way on {len(layers)} of them (first at {layers_text(layers, f.n_layers)})"
            if layers else f"the {lens} lens never reads it as top-1"
        )
    return f"On the other {counted(len(wrong), 'probe')}, " + " and ".join(parts) + ", but the output does not keep it."


def _last_layers(f: ModelFacts) -> str:
    """What the last layers do to the answer (logit lens, which at the output is the model itself)."""
    lowered = [p for p in f.probes if lowered_at_the_end(p)]
    raised = [p for p in f.probes if answer_peak(p)[0] == f.n_layers]
    out = [p for p in f.probes if displaced(p)]
    parts = []
    if raised:
        parts.append(
            f"on {len(raised)} of {len(f.probes)} probes the answer's probability is highest at the output layer itself "
            "(the last layers raise it)"
        )
    if lowered:
        peaks = [answer_peak(p) for p in lowered]
        parts.append(
            f"on {len(lowered)} of {len(f.probes)} probes the answer's probability peaks before the output (median {median(pr for _, pr in peaks):.2f}, at "
            f"{layers_text([layer for layer, _ in peaks], f.n_layers)}) and the last layers lower it (median "
            f"{median(p.final_answer_prob for p in lowered):.2f} at the output)"
        )
    text = "What the last layers do, through the logit lens: " + "; ".join(parts) + "."
    if out:
        finals = sorted({p.final_top1 for p in out})
        text += (
            f" On {counted(len(out), 'probe')} they push the answer out of top-1 after the logit lens read it there (first "
            f"at {layers_text([p.first_top1_layer for p in out], f.n_layers)}), in favour of "
            + " or ".join(_tok(t) for t in finals) + "."
        )
    else:
        text += " They never push out of top-1 an answer the logit lens read there."
    return text


def _answer(f: ModelFacts) -> str:
    """The single-model answer, one paragraph."""
    text = f"In {escaped(f.model)} ({f.n_layers} layers), " + _settles(f) + "."
    elsewhere = _elsewhere(f)
    return text + (" " + elsewhere if elsewhere else "") + " " + _last_layers(f)


def _single_summary(f: ModelFacts) -> str:
    return (
        _answer(f)
        + "\n\n"
        + ANSWER_RULE
        + f" {escaped(f.model)} is a {escaped(f.architecture)} with d_model {f.d_model}. The lens at the last layer reproduces "
        f"the model's own probabilities {identity_text(f.identity_max_prob_diff)} (checked at run time on every probe, on "
        "logits and KL too), so the last row of every trajectory is the model's real output. Per probe: the section 'Where "
        "the answer emerges'; intervals: 'Statistics'."
    )


def _single_emergence(f: ModelFacts) -> str:
    tuned = "tuned" in f.lenses
    rows = [
        [
            escaped(p.id),
            _tok(p.answer),
            f"{_tok(p.final_top1)} ({p.final_top1_prob:.2f})",
            f"{p.final_answer_prob:.3f} / {p.final_answer_rank}",
            _layer(p.first_top1_layer, f.n_layers),
            _layer(p.stable_top1_layer, f.n_layers),
            *([_layer(p.tuned_first_top1_layer, f.n_layers), _layer(p.tuned_stable_top1_layer, f.n_layers)] if tuned else []),
            _peak_cell(p),
            f"{p.best_rank} (layer {p.best_rank_layer})",
        ]
        for p in _shown(f.probes)[0]
    ]
    table = _table(
        ["probe", "expected", "final top-1 (p)", "answer p / rank", "logit lens: first top-1 layer (depth)", "logit lens: stays top-1 from",
         *(["tuned lens: first top-1 layer", "tuned lens: stays top-1 from"] if tuned else []),
         "logit lens: answer p peak (layer) / output", "logit lens: best rank (layer)"],
        rows,
    ) + _shown(f.probes)[1]
    notes = []
    reached = [p for p in f.probes if p.first_top1_layer is not None]
    if reached:
        earliest = min(reached, key=lambda p: (p.first_top1_layer, p.id))
        latest = max(reached, key=lambda p: (p.first_top1_layer, p.id))
        if earliest.first_top1_layer == latest.first_top1_layer:
            notes.append(f"Wherever the answer reaches top-1, it does so first at layer {earliest.first_top1_layer}.")
        else:
            notes.append(
                f"The answer surfaces earliest on {code(earliest.id)} (layer {earliest.first_top1_layer}) and latest on "
                f"{code(latest.id)} (layer {latest.first_top1_layer})."
            )
    lost = [p for p in f.probes if p.first_top1_layer is not None and p.stable_top1_layer is None]
    if lost:
        notes.append(
            "On "
            + _listed([f"{code(p.id)} (top-1 at layer {p.first_top1_layer}, final {_tok(p.final_top1)})" for p in lost])
            + " the answer is top-1 part-way up the stack and then displaced: the fact is readable mid-stack but "
            "the last layers prefer another continuation."
        )
    missed = [p for p in f.probes if p.first_top1_layer is None]
    if missed:
        notes.append(
            "The answer is never top-1 on "
            + _listed([f"{code(p.id)} (best rank {p.best_rank} at layer {p.best_rank_layer}, final {_tok(p.final_top1)})" for p in missed])
            + "."
        )
    if "tuned" in f.lenses:
        notes.append(_lens_disagreements(f))
    return table + ("\n\n" + " ".join(notes) if notes else "")


def _peak_cell(p: ProbeFacts) -> str:
    layer, prob = answer_peak(p)
    return f"{prob:.2f} ({layer}) / {p.final_answer_prob:.2f}"


def _lens_disagreements(f: ModelFacts) -> str:
    """Where the tuned lens and the logit lens place the answer differently."""

    def where(first: int | None, stable: int | None) -> str:
        if first is None:
            return "never top-1"
        return f"top-1 first at layer {first}" + (f", stays from {stable}" if stable is not None else ", not at the end")

    differ = [p for p in f.probes if (p.tuned_first_top1_layer, p.tuned_stable_top1_layer) != (p.first_top1_layer, p.stable_top1_layer)]
    if not differ:
        return "The tuned lens agrees with the logit lens on where the answer surfaces, on every probe."
    return (
        "The tuned lens and the logit lens disagree on where the answer surfaces on "
        + _listed([
            f"{code(p.id)} (tuned lens: {where(p.tuned_first_top1_layer, p.tuned_stable_top1_layer)}; "
            f"logit lens: {where(p.first_top1_layer, p.stable_top1_layer)})"
            for p in differ
        ])
        + ". The two lenses read the same residuals in different bases; the tuned lens's is trained to match the output "
        "distribution (how well, per layer, on held-out text: results/001/lens-quality-" + escaped(f.model) + ".csv), so where "
        "they differ and the tuned lens is the closer one at that layer, its reading is the better-founded."
    )


def _single_entropy(f: ModelFacts) -> str:
    rows = [
        [
            escaped(p.id),
            _nats(p.entropy_layer0),
            f"{p.collapse_layer - 1}→{p.collapse_layer} (−{p.collapse_drop:.2f})",
            _layer(p.first_confident_layer, f.n_layers),
            _nats(p.entropy_final),
            _layer(p.near_final_layer, f.n_layers),
        ]
        for p in _shown(f.probes)[0]
    ]
    table = _table(
        ["probe", "entropy at layer 0", "largest drop (layers, nats)", "first layer ≥ 1 below 1 nat", "final entropy", "KL to final < 1 nat from"],
        rows,
    ) + _shown(f.probes)[1]
    collapse = median(p.collapse_layer / f.n_layers for p in f.probes)
    near = _median_depth([p.near_final_layer for p in f.probes], f.n_layers)
    text = (
        f"Entropies are in nats at the last position. The largest one-layer fall in entropy sits at a median "
        f"relative depth of {collapse:.2f}."
    )
    if near is not None:
        text += f" The lens distribution comes within 1 nat of the final one (KL) from a median depth of {near:.2f}."
    low0 = [p for p in f.probes if p.entropy_layer0 < CONFIDENT_NATS]
    if low0:
        echo = sum(p.trajectory[0]["top1"] == p.input_token for p in low0)
        text += (
            f" At layer 0 the entropy is already below {CONFIDENT_NATS:g} nat on {len(low0)} probe(s): the embedding, "
            f"decoded through the final norm, is confident about one token, the prompt's own last token on {echo} of them"
            + (", not about the answer." if not any(p.trajectory[0]["answer_rank"] == 1 for p in low0) else ".")
        )
    return table + "\n\n" + text



def _single_middle(f: ModelFacts) -> str:
    lo = next(layer for layer in range(f.n_layers + 1) if layer / f.n_layers >= 1 / 3)
    hi = max(layer for layer in range(f.n_layers + 1) if layer / f.n_layers < 2 / 3)
    tokens = ", ".join(f"{_tok(t)} ×{n}" for t, n in f.middle_tokens) or "none"
    answers = {p.answer for p in f.probes}
    share_answers = sum(n for t, n in f.middle_tokens if t in answers)
    total = sum(n for _, n in f.middle_tokens) or 1
    text = (
        f"In the middle band (layers {lo}–{hi}), the most frequent top-1 tokens at the last position across all "
        f"probes are {tokens}."
    )
    shown = sum(n for _, n in f.middle_tokens)
    text += (
        f" {share_answers} of these {shown} readings are an expected answer"
        + (": under half, so the middle of the stack, read through the final unembedding, mostly shows other tokens than the fact."
           if share_answers / total < 0.5 else ": at least half, so the fact is readable well before the last layer.")
    )
    text += "\n\n" + _table(
        ["band", "top-1 repeats the input token (all positions)", "answer is top-1 (last position)"],
        [[b, _pct(f.copy_rate[b]), _pct(f.answer_rate[b])] for b in BANDS],
    )
    return text


def _pair_rows(f: ModelFacts) -> list[list[str]]:
    return [
        [
            escaped(fwd.id),
            f"{fwd.final_answer_prob:.3f} / {fwd.final_answer_rank}",
            _layer(fwd.first_top1_layer, f.n_layers),
            escaped(rev.id),
            f"{rev.final_answer_prob:.3f} / {rev.final_answer_rank}",
            _layer(rev.first_top1_layer, f.n_layers),
        ]
        for fwd, rev in _shown(reverse_pairs(f))[0]
    ]


def _asymmetry(f: ModelFacts) -> str:
    pairs = reverse_pairs(f)
    if not pairs:
        return "No probe declares `reverse_of`, so there is no forward/reverse pair to compare."
    stronger_fwd = sum(fwd.final_answer_prob > rev.final_answer_prob for fwd, rev in pairs)
    text = (
        f"On {stronger_fwd} of {len(pairs)} fact pairs the forward direction (country → capital) gets the higher "
        f"final answer probability; on {len(pairs) - stronger_fwd} the reverse does."
    )
    earlier = [
        (fwd, rev)
        for fwd, rev in pairs
        if fwd.first_top1_layer is not None and rev.first_top1_layer is not None
    ]
    if earlier:
        diff = median(rev.first_top1_layer - fwd.first_top1_layer for fwd, rev in earlier)
        when = "at the same layer as" if diff == 0 else f"{abs(diff):g} layer(s) {'earlier' if diff < 0 else 'later'} than"
        text += f" Where both directions reach top-1, the reverse answer surfaces (median) {when} the forward one."
    return text


def _single_reverse(f: ModelFacts) -> str:
    parts = []
    rows = _pair_rows(f)
    if rows:
        parts.append(
            _table(["forward probe", "answer p / rank", "first top-1", "reverse probe", "answer p / rank", "first top-1"], rows)
        )
    parts.append(_asymmetry(f))
    for p in f.probes:
        if p.style == "plain":
            continue
        plain = next((q for q in f.probes if q.style == "plain" and q.answer == p.answer and not q.reverse_of), None)
        if plain is not None:
            parts.append(
                f"The {escaped(p.style)}-style probe {code(p.id)} ends with answer probability {p.final_answer_prob:.3f} "
                f"(first top-1: {_layer(p.first_top1_layer, f.n_layers)}) against {plain.final_answer_prob:.3f} "
                f"({_layer(plain.first_top1_layer, f.n_layers)}) for the plain {code(plain.id)}."
            )
    return "\n\n".join(parts)


def _caveats(models: list[ModelFacts]) -> str:
    items = [
        "The logit lens reads every layer through the final layer's norm and unembedding; early and middle "
        "layers use a different basis, so their distributions are biased (high KL to final there is partly "
        "the lens's error, not the model's uncertainty)."
        + (" The tuned lens (a translator per layer, trained to match the output) is meant to remove that bias; its "
           "readings stand beside the logit lens's in the Summary and the per-probe tables, and how close it comes to the "
           "output per layer on held-out text is in "
           + ", ".join(code(f"results/001/lens-quality-{f.model}.csv") for f in models if "tuned" in f.lenses) + "."
           if any("tuned" in f.lenses for f in models) else " A tuned lens (config `lenses`) is meant to remove that bias."),
        f"Each model is judged on {len(models[0].probes)} probes; accuracies and differences come with 95% intervals "
        "(section 'Statistics'), which are wide on a set this size"
        + (" (a few hundred facts narrow them: docs/experiments.md, 'Probe sets')" if len(models[0].probes) < 100 else "")
        + ". The per-layer figures follow the answer's first token.",
    ]
    for f in models:
        if f.source.get("source") in ("gguf", "package"):
            items.append(
                f"{code(f.model)} runs on weights dequantised from a quantised GGUF file; its probabilities can differ "
                "slightly from the original release's."
            )
        warned = [f"{code(p.id)}: {escaped(w)}" for p in f.probes for w in p.warnings]
        if warned:
            items.append(f"{code(f.model)}: " + _listed(warned) + ".")
        if not f.lens.get("use_norm_lens", True):
            items.append(f"{code(f.model)} was decoded without its final norm (`use_norm_lens: false`): raw residuals.")
        if f.lens.get("positions") == "last":
            items.append(f"{code(f.model)} was recorded at the last position only; input-copy rates cover that position alone.")
    return "\n".join(f"- {item}" for item in items)


SINGLE: dict[str, Callable[[ModelFacts], str]] = {
    "summary": _single_summary,
    "statistics": _single_statistics,
    "where the answer emerges": _single_emergence,
    "confidence and entropy": _single_entropy,
    "what the middle layers say": _single_middle,
    "forward and reverse facts": _single_reverse,
    "caveats": lambda f: _caveats([f]),
}


# ---------------------------------------------------------------- cross model


def _last_layers_short(f: ModelFacts, raised: int, lowered: int, out: int) -> str:
    clauses = []
    if raised:
        clauses.append(f"raise the answer's probability to its highest on {raised} of {len(f.probes)} probes")
    if lowered:
        clauses.append(f"lower it from an earlier peak on {lowered} of {len(f.probes)}")
    if out:
        clauses.append(f"push it out of top-1 after it was read there on {out}")
    elif lowered:
        clauses.append("never push out of top-1 an answer read there")
    if not clauses:
        return ""
    return "Its last layers (logit lens) " + (", ".join(clauses[:-1]) + " and " if len(clauses) > 1 else "") + clauses[-1] + "."


def _cross_summary(models: list[ModelFacts]) -> str:
    parts = []
    for f in models:
        text = f"In {escaped(f.model)} ({f.n_layers} layers), " + _settles(f) + ". "
        lowered = sum(lowered_at_the_end(p) for p in f.probes)
        raised = sum(answer_peak(p)[0] == f.n_layers for p in f.probes)
        out = sum(displaced(p) for p in f.probes)
        text += _last_layers_short(f, raised, lowered, out)
        parts.append(text)
    text = " ".join(parts)
    if len(models) > 1:
        comparisons = []
        for lens in _lens_names(models[0]):
            if not all(lens in f.lenses for f in models):
                continue
            depth = {}
            for f in models:
                layers = _stays(f, [p for p in f.probes if p.correct], lens)
                if layers:
                    depth[f.model] = median(layer / f.n_layers for layer in layers)
            if len(depth) < 2:
                continue
            order = sorted(depth, key=lambda m: (depth[m], m))
            if depth[order[0]] == depth[order[-1]]:
                comparisons.append(f"through the {lens} lens they settle at the same relative depth ({depth[order[0]]:.2f})")
            else:
                comparisons.append(
                    f"through the {lens} lens {escaped(order[0])} settles on the answer {'earlier' if len(order) == 2 else 'earliest'} (median relative depth "
                    f"{depth[order[0]]:.2f}, against {', '.join(f'{depth[m]:.2f} for {escaped(m)}' for m in order[1:])})"
                )
        if comparisons:
            text += " In relative depth (layer / number of layers, median over the probes each model answers), " + "; ".join(comparisons) + "."
        scores = sorted({f.n_correct for f in models}, reverse=True)
        best = [escaped(f.model) for f in models if f.n_correct == scores[0]]
        if len(best) == len(models):
            differ = sum(
                len({f.probe(pid).correct for f in models if f.probe(pid) is not None}) > 1 for pid in _probe_ids(models)
            )
            text += (
                " The models answer the same number of probes"
                + (f" but disagree on {differ} of them." if differ else ", the same ones.")
            )
        else:
            text += f" On this probe set {', '.join(best)} answers the most probes."
    return text + "\n\n" + ANSWER_RULE + " Per probe and lens: the section 'Answer emergence by relative depth'."


def _cross_models(models: list[ModelFacts]) -> str:
    return _table(
        ["model", "architecture", "layers", "d_model", "vocabulary", "dtype / device", "source", "correct"],
        [
            [
                escaped(f.model),
                escaped(f.architecture),
                str(f.n_layers),
                str(f.d_model),
                str(f.vocab_size),
                f"{f.dtype} / {f.device}",
                str(f.source.get("source")),
                f"{f.n_correct}/{len(f.probes)}",
            ]
            for f in models
        ],
    )


def _probe_ids(models: list[ModelFacts]) -> list[str]:
    ids: list[str] = []
    for f in models:
        ids += [p.id for p in f.probes if p.id not in ids]
    return ids


def _cross_depth(models: list[ModelFacts]) -> str:
    ids, note = _shown(_probe_ids(models))
    tuned = any("tuned" in f.lenses for f in models)
    rows = []
    for pid in ids:
        for f in models:
            p = f.probe(pid)
            if p is None:
                continue
            has_tuned = "tuned" in f.lenses
            rows.append([
                escaped(pid), escaped(f.model), _tok(p.final_top1) + (" (answer)" if p.correct else ""),
                _layer(p.first_top1_layer, f.n_layers), _layer(p.stable_top1_layer, f.n_layers),
                *([_layer(p.tuned_first_top1_layer, f.n_layers) if has_tuned else "—",
                   _layer(p.tuned_stable_top1_layer, f.n_layers) if has_tuned else "—"] if tuned else []),
                _peak_cell(p),
            ])
    table = _table(
        ["probe", "model", "output top-1", "logit lens: first top-1 layer (depth)", "logit lens: stays top-1 from",
         *(["tuned lens: first top-1 layer (depth)", "tuned lens: stays top-1 from"] if tuned else []),
         "logit lens: answer p peak (layer) / output"],
        rows,
    ) + note
    return (
        "Layers with their relative depth (layer / number of layers) in brackets, so models of different depth line up "
        "(0 = embedding, 1 = output): " + ", ".join(f"{escaped(f.model)} has {f.n_layers} layers" for f in models) + ".\n\n" + table
    )


def _cross_probes(models: list[ModelFacts]) -> str:
    rows = []
    ids, note = _shown(_probe_ids(models))
    for pid in ids:
        row = [escaped(pid)]
        for f in models:
            p = f.probe(pid)
            row.append("—" if p is None else f"{_tok(p.final_top1)} ({p.final_top1_prob:.2f}); answer {p.final_answer_prob:.2f}")
        rows.append(row)
    disagree = []
    for pid in _probe_ids(models):
        verdicts = {escaped(f.model): f.probe(pid).correct for f in models if f.probe(pid) is not None}
        if len(set(verdicts.values())) > 1:
            right = [m for m, ok in verdicts.items() if ok]
            disagree.append(f"{code(pid)} (right: {', '.join(right)})")
    text = _table(["probe"] + [f"{escaped(f.model)}: final top-1 (p); answer p" for f in models], rows) + note
    if disagree:
        text += f"\n\nThe models disagree on {len(disagree)} probe(s): " + _listed(disagree) + "."
    return text


def _cross_differences(models: list[ModelFacts]) -> str:
    lines = []
    for f in models:
        collapse = median(p.collapse_layer / f.n_layers for p in f.probes)
        entropy_final = median(p.entropy_final for p in f.probes)
        lines.append(
            f"- {escaped(f.model)}: largest entropy drop at median depth {collapse:.2f}; median final entropy "
            f"{entropy_final:.2f} nats; top-1 repeats the input token in {_pct(f.copy_rate['early'])} of early-band "
            f"rows and {_pct(f.copy_rate['late'])} of late-band rows; middle-band favourites: "
            + (", ".join(_tok(t) for t, _ in f.middle_tokens[:4]) or "none")
            + ". "
            + _asymmetry(f)
        )
    if len(models) > 1:
        confident = min(models, key=lambda f: (median(p.entropy_final for p in f.probes), f.model))
        lines.append(f"\n{escaped(confident.model)} ends with the lowest median entropy: it is the more decisive model at its output.")
    return "\n".join(lines)


CROSS: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _cross_summary,
    "statistics": _cross_statistics,
    "models compared": _cross_models,
    "answer emergence by relative depth": _cross_depth,
    "probe by probe": _cross_probes,
    "differences between the models": _cross_differences,
    "caveats": _caveats,
}


# ---------------------------------------------------------------- meta


def _meta_answer(models: list[ModelFacts]) -> str:
    """The experiment's answer, as the cross-model evaluation gives it, in one sentence per model."""
    parts = []
    for f in models:
        correct = [p for p in f.probes if p.correct]
        lenses = [
            f"from {layers_text(layers, f.n_layers)} through the {lens} lens"
            for lens in _lens_names(f) if (layers := _stays(f, correct, lens))
        ]
        parts.append(
            f"in {escaped(f.model)} the answer becomes top-1 and stays there to the output "
            + ("; ".join(lenses) if lenses else "on no probe")
            + f" (on the {counted(len(correct), 'probe')} of {len(f.probes)} it answers)"
        )
    return "The answer this critique weighs: " + "; ".join(parts) + "."


def _meta_summary(models: list[ModelFacts]) -> str:
    early_kl = median(p.trajectory[0]["kl_to_final"] for f in models for p in f.probes)
    entropy0 = median(p.entropy_layer0 for f in models for p in f.probes)
    point_mass = (
        f" (the layer-0 reading has a median entropy of {_nats(entropy0)} nats, below {CONFIDENT_NATS:g}: close to a point "
        "mass on one token, so the tokens the model finally predicts sit far down its log-probabilities)"
        if entropy0 < CONFIDENT_NATS else ""
    )
    return (
        _meta_answer(models)
        + "\n\n"
        f"Experiment 001 decodes every layer of {len(models)} model(s) through each model's own final norm and "
        f"unembedding on {len(models[0].probes)} factual probes. The method is exact at the last layer (checked at "
        f"run time) and increasingly approximate towards the embedding: the median KL from the final distribution "
        f"to the layer-0 reading is {early_kl:.1f} nats{point_mass}. The findings below are best read as 'when does the "
        "final readout become available', not 'when does the model know'."
    )


def _meta_measures(models: list[ModelFacts]) -> str:
    lens = models[0].lens
    return (
        "For each probe, layer 0..L and position, the records hold the top-k tokens of the lens distribution, its "
        "entropy, the expected answer's probability and rank, and KL(final ‖ layer). Settings: "
        + ", ".join(code(f"{k}: {v}") for k, v in sorted(lens.items()))
        + ". Layer 0 is the residual stream entering the first block; layer L is after the last block, where the "
        "lens equals the model's output."
    )


def _meta_threats(models: list[ModelFacts]) -> str:
    items = []
    for f in models:
        early = [p.trajectory[0]["kl_to_final"] for p in f.probes]
        middle = [p.trajectory[f.n_layers // 2]["kl_to_final"] for p in f.probes]
        items.append(
            f"{code(f.model)}: KL from the output distribution to the logit lens's reading is {median(early):.1f} nats at layer 0 "
            f"and {median(middle):.1f} at layer {f.n_layers // 2} (medians over probes): readings there are far from the output, "
            f"partly through the lens's basis mismatch. The last-layer identity holds {identity_text(f.identity_max_prob_diff)}."
        )
    multi = sum(p.n_answer_tokens > 1 for f in models for p in f.probes)
    n = sum(len(f.probes) for f in models)
    items.append(
        (f"The per-layer readings follow the answer's first token: {multi} of {n} (model, probe) answers here have several "
         "tokens, whose later tokens are scored only at the output (whole-answer log-probability and greedy decoding).")
        if multi else
        (f"All {n} (model, probe) answers here are single tokens; for an answer of several, the per-layer readings follow "
         "its first token only and the rest is scored at the output.")
    )
    accuracy = ", ".join(f"{escaped(f.model)} {_pct(f.n_correct / len(f.probes))}" for f in models)
    items.append(
        f"The probe set is a handful of well-known capitals, forward and reverse; the models answer few of them ({accuracy} "
        "final top-1 accuracy), so emergence layers rest on few probes."
    )
    near = [(f, p) for f in models for p in f.probes if p.final_answer_rank in (2, 3)]
    if near:
        items.append(
            f"Top-1 is a coarse criterion: on {len(near)} of {n} (model, probe) outputs the answer is at rank 2 or 3 (up to "
            f"p = {max(p.final_answer_prob for _, p in near):.2f}) and counts as absent. Ranks and probabilities are recorded "
            "to allow finer readings."
        )
    the = [(f, p) for f in models for p in f.probes if not p.correct and p.final_top1.strip().lower() in ("the", "a", "an")]
    if the:
        items.append(
            f"Prompts are bare completions: on {len(the)} of {n} (model, probe) outputs the model continues with an article "
            "instead of the answer, which does not show that it lacks the fact."
        )
    items.append("One prompt per fact: a paraphrase could move the emergence layer; there is no estimate of that variance yet.")
    return "\n".join(f"- {i}" for i in items)


# The rule of the 'nominalist or realist' reading: a band reads one way when at least this share of
# its rows does (a majority).
READING_SHARE = 0.5


def realism(f: ModelFacts) -> tuple[bool, bool]:
    """(early layers read nominalist, late layers read realist) by the rule READING_SHARE states."""
    return f.copy_rate["early"] >= READING_SHARE, f.answer_rate["late"] >= READING_SHARE


def _meta_realism(models: list[ModelFacts]) -> str:
    rows = [
        [escaped(f.model), _pct(f.copy_rate["early"]), _pct(f.copy_rate["late"]), _pct(f.answer_rate["early"]), _pct(f.answer_rate["late"])]
        for f in models
    ]
    table = _table(
        ["model", "early: top-1 repeats input", "late: top-1 repeats input", "early: answer top-1", "late: answer top-1"],
        rows,
    )
    share = _pct(READING_SHARE)
    verdicts = []
    for f in models:
        nominal, real = realism(f)
        early = (
            f"its early band echoes the input in {_pct(f.copy_rate['early'])} of rows, "
            + (f"at least {share}: nominalist" if nominal else f"under {share}: not nominalist")
        )
        late = (
            f"its late band has the answer top-1 in {_pct(f.answer_rate['late'])} of rows, "
            + (f"at least {share}: realist" if real else f"under {share}: not realist")
        )
        whole = (
            "it fits the picture (nominalist early, realist late)" if nominal and real
            else "it does not fit the picture on either count" if not nominal and not real
            else "it fits only half of the picture"
        )
        verdicts.append(f"{escaped(f.model)}: {early}; {late}; so {whole}.")
    return (
        "The project's question is whether layers look 'nominalist' early (representations tied to surface tokens, "
        "read here as the lens echoing the current input token) and 'realist' late (representations of the entity "
        "or answer itself, read here as the expected answer being top-1). Bands are thirds of the depth (early: relative "
        f"depth under 1/3, late: 2/3 and over); the rule: a band reads nominalist when the logit lens's top-1 repeats the "
        f"input token in at least {share} of its rows (all positions), realist when the expected answer is top-1 in at least "
        f"{share} of its rows (last position).\n\n"
        + table
        + "\n\n"
        + " ".join(verdicts)
        + " A logit lens can only show what is linearly readable in the output basis; an early layer that "
        "encodes the concept in another basis would look 'nominalist' here. The tuned lens and patching tests below are what would separate the two."
    )


def _meta_next_probes(models: list[ModelFacts]) -> str:
    items = []
    failed = sorted({p.id for f in models for p in f.probes if not p.correct})
    if failed:
        items.append(
            "Paraphrases of the probes some model got wrong ("
            + _listed([code(i) for i in failed])
            + "), to tell a missing fact from a prompt the model reads differently."
        )
    items += [
        "Counterfactual prompts ('In this story, the capital of Germany is Paris. The capital of Germany is') to "
        "see at which depth context overrides memory.",
        "Reverse pairs beyond capitals (author ↔ work, element ↔ symbol), so the forward/reverse asymmetry is not "
        "a property of one relation.",
        "Per-layer tracking of multi-token answers beyond their first token (' Buenos Aires'): the records follow the "
        "first token; the whole answer is scored only at the last layer.",
        "The same facts in another language (e.g. German prompts), to see whether the answer emerges at the same depth.",
    ]
    return "\n".join(f"- {i}" for i in items)


def _meta_next_methods(models: list[ModelFacts]) -> str:
    return "\n".join(
        f"- {i}"
        for i in [
            "Tuned lens (an affine translator per layer trained to match the final distribution) to remove the "
            "basis bias of early layers and re-measure the emergence depths.",
            "Activation patching between forward and reverse prompts, to find the layers that carry the fact.",
            "Attention to the subject token at the layers where the answer first appears.",
            "Larger models of the same families (Llama 3 8B, Gemma 2 9B, Qwen3 8B) through the same pipeline, to see "
            "whether emergence depth is a constant fraction of depth.",
        ]
    )


META: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _meta_summary,
    "what the method measures": _meta_measures,
    "threats to validity": _meta_threats,
    "nominalist or realist?": _meta_realism,
    "next probes": _meta_next_probes,
    "next methods": _meta_next_methods,
}

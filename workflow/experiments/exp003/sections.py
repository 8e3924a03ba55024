"""Experiment 003's offline analyst: the sections of its three evaluations.

Every sentence is a figure computed from the recorded outputs (``workflow.experiments.exp003.analysis``)
put into words by fixed rules: where generated tokens settle, whether content words settle
deeper than function words, and how the tuned lens differs.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median

from workflow.evaluation.text import counted, escaped, identity_text, table, tok
from workflow.experiments.exp003.analysis import CLASSES, ModelFacts
from workflow.experiments.exp003.digest import depth


# Content words "settle deeper" when P(a content word settles deeper than a function word) is
# above DEEPER, function words when it is below 1 - DEEPER; in between, neither.
DEEPER = 0.6


def _later_text(value: float | None) -> str:
    if value is None:
        return "cannot be compared (the replies lack content or function words)"
    if value > DEEPER:
        verdict = "content words settle deeper"
    elif value < 1 - DEEPER:
        verdict = "function words settle deeper"
    else:
        verdict = "neither class settles clearly deeper"
    return (
        f"{verdict} (probability that a content word settles deeper than a function word {depth(value)}; 0.5 = no "
        f"difference, above {DEEPER:g} counts as content deeper, below {1 - DEEPER:g} as function deeper)"
    )


def last_tenth(n_layers: int) -> int:
    """The first layer of the last tenth of the depth (relative depth >= 0.9)."""
    return next(layer for layer in range(n_layers + 1) if layer / n_layers >= 0.9)


def _settled(f: ModelFacts, lens: str, word_class: str | None = None) -> list[int]:
    return [t.stable[lens] for p in f.probes for t in p.tokens
            if t.stable[lens] is not None and (word_class is None or t.word_class == word_class)]


def _median_layer(layers: list[int]) -> str:
    return "n/a" if not layers else f"{median(layers):g}"


def _layer_depth(layers: list[int], n_layers: int) -> str:
    return "n/a" if not layers else f"{median(layers):g} ({median(layers) / n_layers:.2f})"


def _formed(f: ModelFacts) -> str:
    """Where the generated tokens form, one model, in words."""
    text = (
        f"In {escaped(f.model)} ({f.n_layers} layers, {f.n_tokens} tokens generated greedily after {counted(len(f.probes), 'prompt')}), "
    )
    parts = []
    for lens in f.lenses:
        layers = _settled(f, lens)
        if not layers:
            continue
        parts.append(
            f"through the {lens} lens {'a generated token becomes the lasting top-1 ' if not parts else ''}at a median layer {_median_layer(layers)} of "
            f"{f.n_layers}; {sum(x == f.n_layers for x in layers)} of {len(layers)} only at the last layer, "
            f"{sum(x >= last_tenth(f.n_layers) for x in layers)} in the last tenth (layer {last_tenth(f.n_layers)} or later)"
        )
    text += "; ".join(parts) + "."
    content, function = _settled(f, "logit", "content"), _settled(f, "logit", "function")
    if content and function:
        text += (
            f" Through the logit lens content words settle at a median layer {_median_layer(content)} and function words at "
            f"{_median_layer(function)}: {_later_text(f.content_later['logit'])}."
        )
    return text


def _single_summary(f: ModelFacts) -> str:
    return (
        _formed(f)
        + "\n\n"
        + "A token settles at the layer from which the lens's top-1 at its position stays the generated token up to the "
        f"output (greedy decoding: at the output it always is). Up to {f.max_new_tokens} tokens per prompt. At the last layer "
        f"the lens reproduces the model's probabilities {identity_text(f.identity_max_prob_diff)}. Per lens and class: "
        "the sections 'Where generated tokens settle' and 'Content and function words'."
    )


def _single_settle(f: ModelFacts) -> str:
    rows = []
    for p in f.probes:
        stables = [t.stable["logit"] for t in p.tokens]
        earliest = min(p.tokens, key=lambda t: (t.stable["logit"], t.index))
        rows.append([escaped(p.id), tok(p.text[:40]), str(len(p.tokens)), depth(median(stables) / f.n_layers),
                     f"{tok(earliest.token)} at {earliest.stable['logit']}"])
    by_lens = []
    for lens in f.lenses:
        layers = _settled(f, lens)
        by_lens.append([lens, str(len(layers)), _layer_depth(layers, f.n_layers),
                        str(sum(x == f.n_layers for x in layers)), str(sum(x >= last_tenth(f.n_layers) for x in layers))])
    return (
        table(["lens", "tokens", "median settling layer (depth)", f"settle only at the last layer ({f.n_layers})",
               f"settle in the last tenth (layer {last_tenth(f.n_layers)} or later)"], by_lens)
        + "\n\nPer probe, through the logit lens; settling depth: the layer from which the lens's top-1 stays the generated "
        "token, over the number of layers (1.00 = only at the last layer).\n\n"
        + table(["probe", "reply", "tokens", "median settling depth", "earliest-settling token (layer)"], rows)
    )


def _single_classes(f: ModelFacts) -> str:
    rows = []
    for lens in f.lenses:
        for name in CLASSES:
            s = f.by_class[lens][name]
            if s.count:
                rows.append([lens, name, str(s.count), depth(s.median_first), _median_layer(_settled(f, lens, name)),
                             depth(s.median_stable)])
    return (
        table(["lens", "class", "tokens", "median first top-1 depth", "median settling layer", "median settling depth"], rows)
        + f"\n\nLogit lens: {_later_text(f.content_later['logit'])}. Classes come from the token's text "
        "(a fixed list of English function words; pieces continuing a word are their own class)."
    )


def _single_lenses(f: ModelFacts) -> str:
    if "tuned" not in f.lenses:
        return "Only the logit lens was run (config lenses); the tuned lens would show how much earlier a trained translator reads the tokens."
    pairs = [(t.stable["logit"], t.stable["tuned"]) for p in f.probes for t in p.tokens]
    earlier = sum(tuned < logit for logit, tuned in pairs)
    same = sum(tuned == logit for logit, tuned in pairs)
    return (
        f"The tuned lens settles on {earlier} of {len(pairs)} generated tokens earlier than the logit lens and on {same} at the "
        f"same layer. Tuned lens: {_later_text(f.content_later['tuned'])}."
    )


def _caveats(facts) -> str:
    return (
        "- Greedy replies to a handful of factual prompts: few tokens per class, no intervals; the class comparison is descriptive.\n"
        "- Word classes are read from token text with an English list; other languages and subword pieces are not classified.\n"
        "- A token's settling depth depends on the tokens before it, which the model itself generated (not a fixed text)."
    )


SINGLE: dict[str, Callable[[ModelFacts], str]] = {
    "summary": _single_summary,
    "where generated tokens settle": _single_settle,
    "content and function words": _single_classes,
    "logit and tuned lens": _single_lenses,
    "caveats": _caveats,
}


def _cross_summary(models: list[ModelFacts]) -> str:
    text = " ".join(_formed(m) for m in models)
    if len(models) > 1:
        medians = {m.model: median(x / m.n_layers for x in _settled(m, "logit")) for m in models if _settled(m, "logit")}
        if len(medians) > 1:
            order = sorted(medians, key=lambda k: (medians[k], k))
            text += (
                " In relative depth (layer / number of layers), through the logit lens, "
                + (f"the models' tokens settle at the same median depth ({depth(medians[order[0]])})."
                   if medians[order[0]] == medians[order[-1]] else
                   f"{escaped(order[0])}'s tokens settle {'earlier' if len(order) == 2 else 'earliest'} (median {depth(medians[order[0]])}, "
                   "against " + ", ".join(f"{depth(medians[k])} for {escaped(k)}" for k in order[1:]) + ").")
            )
    return (
        text + "\n\nThe models generated after the same prompts, so their replies, and the tokens compared, differ. Per model "
        "and class: the section 'By relative depth'."
    )


def _cross_depth(models: list[ModelFacts]) -> str:
    rows = [[escaped(m.model), str(m.n_layers), str(m.n_tokens)] + [depth(m.by_class["logit"][c].median_stable) for c in ("content", "function", "continuation", "other")]
            + [depth(m.content_later["logit"])] for m in models]
    lenses = [lens for lens in ("logit", "tuned") if any(lens in m.lenses for m in models)]
    layers = []
    for m in models:
        for lens in lenses:
            settled = _settled(m, lens) if lens in m.lenses else []
            if settled:
                layers.append([escaped(m.model), lens, str(len(settled)), _layer_depth(settled, m.n_layers),
                               str(sum(x == m.n_layers for x in settled)), str(sum(x >= last_tenth(m.n_layers) for x in settled)),
                               _median_layer(_settled(m, lens, "content")), _median_layer(_settled(m, lens, "function"))])
    return (
        table(["model", "lens", "tokens", "median settling layer (depth)", "only at the last layer", "in the last tenth",
               "content: median layer", "function: median layer"], layers)
        + "\n\nMedian relative settling depth by word class, logit lens:\n\n"
        + table(["model", "layers", "tokens", "content", "function", "continuation", "other", "P(content deeper)"], rows)
    )


def _cross_differences(models: list[ModelFacts]) -> str:
    same = [escaped(m.model) for m in models if m.content_later["logit"] is not None and m.content_later["logit"] > DEEPER]
    return (
        f"Content words settle clearly deeper than function words (P(content deeper) above {DEEPER:g}, logit lens) in "
        f"{len(same)} of {len(models)} models"
        + (f" ({', '.join(same)})" if same else "")
        + ". The replies differ between models, so the token sets compared differ too."
    )


CROSS: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _cross_summary,
    "by relative depth": _cross_depth,
    "differences between models": _cross_differences,
    "caveats": _caveats,
}


def _meta_answer(models: list[ModelFacts]) -> str:
    parts = []
    for m in models:
        lenses = [f"a median layer {_median_layer(_settled(m, lens))} of {m.n_layers} through the {lens} lens"
                  for lens in m.lenses if _settled(m, lens)]
        parts.append(f"{escaped(m.model)}'s generated tokens settle at " + " and ".join(lenses))
    return "The answer this critique weighs: " + "; ".join(parts) + "."


def _meta_summary(models: list[ModelFacts]) -> str:
    return _meta_answer(models) + "\n\n" + (
        f"Experiment 003 runs the lens on text the model writes itself ({sum(m.n_tokens for m in models)} tokens over "
        f"{len(models)} models), one new position per step with the key-value cache, and asks at which layer each token "
        "becomes the answer."
    )


def _meta_measures(models: list[ModelFacts]) -> str:
    return (
        "The settling depth is the first layer from which the lens's top-1 stays the generated token up to the last layer; at "
        "the last layer it always is (greedy decoding, and the lens reproduces the model there, checked at every step). It "
        "measures readability through the final norm and unembedding, not where the token is computed."
    )


def _meta_threats(models: list[ModelFacts]) -> str:
    return (
        "- Greedy replies follow the model's own errors: a token after a wrong one is conditioned on it.\n"
        "- The word-class list is English and fixed; multi-token words count their first piece as the word.\n"
        "- The logit lens reads late on models whose intermediate residuals are in another basis; the tuned lens corrects this "
        "only as far as its translators were trained."
    )


def _meta_next(models: list[ModelFacts]) -> str:
    return (
        "- Sample several replies per prompt (temperature above 0, several seeds) for intervals on the class difference.\n"
        "- Patch (experiment 002) at the settling layer of generated content words to ask whether the reading is causal.\n"
        "- Tag words with a part-of-speech tagger instead of a list."
    )


META: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _meta_summary,
    "what the generation lens measures": _meta_measures,
    "threats to validity": _meta_threats,
    "next experiments": _meta_next,
}

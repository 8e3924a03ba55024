"""Experiment 003's offline analyst: the sections of its three evaluations.

Every sentence is a figure computed from the recorded outputs (``workflow.exp003.analysis``)
put into words by fixed rules: where generated tokens settle, whether content words settle
deeper than function words, and how the tuned lens differs.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median

from workflow.evaluation.text import escaped, identity_text, table, tok
from workflow.exp003.analysis import CLASSES, ModelFacts
from workflow.exp003.digest import depth


def _later_text(value: float | None) -> str:
    if value is None:
        return "cannot be compared (the replies lack content or function words)"
    if value > 0.6:
        verdict = "content words settle deeper"
    elif value < 0.4:
        verdict = "function words settle deeper"
    else:
        verdict = "neither class settles clearly deeper"
    return f"{verdict} (probability that a content word settles deeper than a function word {depth(value)}; 0.5 = no difference)"


def _single_summary(f: ModelFacts) -> str:
    stats = f.by_class["logit"]
    settled = [t.stable["logit"] / f.n_layers for p in f.probes for t in p.tokens]
    late = sum(v >= 0.9 for v in settled)
    return (
        f"{escaped(f.model)} ({escaped(f.architecture)}, {f.n_layers} layers) generated {f.n_tokens} tokens greedily after {len(f.probes)} "
        f"prompts (up to {f.max_new_tokens} each), and the logit lens decoded every layer of the position that predicted each "
        f"one. {late} of {len(settled)} tokens become the lens's lasting top-1 only in the last tenth of the depth. Over "
        f"{stats['content'].count} content and {stats['function'].count} function words, {_later_text(f.content_later['logit'])}. "
        f"At the last layer the lens reproduces the model's probabilities {identity_text(f.identity_max_prob_diff)}."
    )


def _single_settle(f: ModelFacts) -> str:
    rows = []
    for p in f.probes:
        stables = [t.stable["logit"] for t in p.tokens]
        earliest = min(p.tokens, key=lambda t: (t.stable["logit"], t.index))
        rows.append([escaped(p.id), tok(p.text[:40]), str(len(p.tokens)), depth(median(stables) / f.n_layers),
                     f"{tok(earliest.token)} at {earliest.stable['logit']}"])
    return (
        "Settling depth: the layer from which the logit lens's top-1 stays the generated token, over the number of layers "
        "(1.00 = only at the last layer).\n\n"
        + table(["probe", "reply", "tokens", "median settling depth", "earliest-settling token (layer)"], rows)
    )


def _single_classes(f: ModelFacts) -> str:
    rows = []
    for lens in f.lenses:
        for name in CLASSES:
            s = f.by_class[lens][name]
            if s.count:
                rows.append([lens, name, str(s.count), depth(s.median_first), depth(s.median_stable)])
    return (
        table(["lens", "class", "tokens", "median first top-1 depth", "median settling depth"], rows)
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
    parts = [f"{escaped(m.model)} {depth(m.by_class['logit']['content'].median_stable)} / {depth(m.by_class['logit']['function'].median_stable)}" for m in models]
    return (
        f"{len(models)} models generated greedily after the same prompts. Median relative settling depth of content / function "
        "words under the logit lens: " + "; ".join(parts) + "."
    )


def _cross_depth(models: list[ModelFacts]) -> str:
    rows = [[escaped(m.model), str(m.n_layers), str(m.n_tokens)] + [depth(m.by_class["logit"][c].median_stable) for c in ("content", "function", "continuation", "other")]
            + [depth(m.content_later["logit"])] for m in models]
    return table(["model", "layers", "tokens", "content", "function", "continuation", "other", "P(content deeper)"], rows)


def _cross_differences(models: list[ModelFacts]) -> str:
    same = [escaped(m.model) for m in models if m.content_later["logit"] is not None and m.content_later["logit"] > 0.6]
    return (
        f"Content words settle clearly deeper than function words in {len(same)} of {len(models)} models"
        + (f" ({', '.join(same)})" if same else "")
        + ". The replies differ between models, so the token sets compared differ too."
    )


CROSS: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _cross_summary,
    "by relative depth": _cross_depth,
    "differences between models": _cross_differences,
    "caveats": _caveats,
}


def _meta_summary(models: list[ModelFacts]) -> str:
    return (
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

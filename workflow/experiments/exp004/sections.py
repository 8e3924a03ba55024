"""Experiment 004's offline analyst: the sections of its three evaluations.

Every sentence is a figure computed from the recorded outputs (``workflow.experiments.exp004.analysis``)
put into words by fixed rules: which components write the answer and which its competitor,
what patching each recovers, and how far attribution patching can stand in for exact
patching.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from statistics import mean, median

from workflow.evaluation.text import counted, escaped, identity_text, table, tok
from workflow.experiments.exp004.analysis import (
    RESTORES,
    ModelFacts,
    PairFacts,
    RestoringSite,
    Site,
    component_words,
    relative,
    restoring_sites,
)
from workflow.experiments.exp004.digest import site_text


def _site(site: Site) -> str:
    # site_text quotes the site's token as Python writes it, for the digest; here it is markdown.
    return escaped(site_text(site))


def _depth(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _leader(pair: PairFacts) -> str:
    """Which sublayer first makes the answer the lens's top-1."""
    mid, post = pair.first_top1("mid"), pair.first_top1("post")
    if mid is None and post is None:
        return "the lens never ranks the answer first inside the blocks"
    if post is not None and (mid is None or post < mid):
        return f"the MLP of block {post} first makes it the lens's top-1"
    return f"the attention of block {mid} first makes it the lens's top-1"


def _winner(pair: PairFacts) -> str:
    top = pair.writers[0]
    return f"{_writer_words(top.name)} ({top.value:+.2f})"


# The answer to the experiment's question, first in every evaluation: which components (block,
# attention / MLP / head, position) write the answer, by exact patching and by direct logit
# attribution, and how the models differ. Every figure is one the document's tables hold.

RESTORE_RULE = (
    f"A component restores the answer when its clean output, patched alone into the corrupted run at one position, brings "
    f"back at least {RESTORES} of the logit difference (recovered >= {RESTORES}); listed are those that do so on at least "
    "half the pairs, at a subject token (the best of them) or at the last position. Blocks are counted from 0; the "
    "residual after block b is experiments 001's and 002's layer b + 1."
)


def _where_words(where: str) -> str:
    return "at the subject token" if where == "subject" else "at the last position"


def _range(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


def _site_words(site: RestoringSite, n_pairs: int) -> str:
    return f"{component_words(site.layer, site.component)} {_where_words(site.where)} ({site.restored} of {n_pairs} pairs, recovered {_range(site.recovered)})"


def _grouped(sites: list[RestoringSite]) -> list[tuple[RestoringSite, list[RestoringSite]]]:
    """Whole components, each with the heads that restore at the same block and position."""
    whole = sorted((s for s in sites if not s.component.startswith("head")), key=lambda s: (s.layer, s.component, s.where))
    heads = [s for s in sites if s.component.startswith("head")]
    grouped = [(w, [h for h in heads if h.layer == w.layer and h.where == w.where and w.component == "attention"]) for w in whole]
    inside = {id(h) for _, hs in grouped for h in hs}
    return grouped + [(h, []) for h in heads if id(h) not in inside]


def _top_writers(f: ModelFacts) -> Counter:
    return Counter(p.writers[0].name for p in f.pairs if p.writers)


def _writer_words(name: str) -> str:
    layer, component = name[1:].split(".", 1)
    return component_words(int(layer), component)


def _components(f: ModelFacts) -> str:
    """Which components write the answer, one model, in words."""
    n = len(f.pairs)
    heads = f"{f.n_heads} heads per block" if f.heads_exposed else "heads not exposed"
    text = f"In {escaped(f.model)} ({f.n_layers} blocks, {heads}; {counted(n, 'pair')}), "
    sites = restoring_sites(f)
    if not any(p.patched for p in f.pairs):
        text += "exact patching was switched off, so no component is shown to restore the answer."
    elif not sites:
        text += f"no single component restores the answer (recovered >= {RESTORES}) on half the pairs or more."
    else:
        parts = []
        for whole, within in _grouped(sites):
            part = _site_words(whole, n)
            if within:
                part += ", within it " + " and ".join(
                    f"{component_words(h.layer, h.component)} alone ({h.restored} of {n}, {_range(h.recovered)})" for h in within)
            parts.append(part)
        text += (f"{counted(len(parts), 'component')} restore the answer when patched: " if len(parts) > 1
                 else "one component restores the answer when patched: ") + "; ".join(parts) + "."
    writers = _top_writers(f)
    if writers:
        text += (
            " Straight into the output (direct logit attribution of answer minus competitor at the last position), the largest "
            "single writer is " + ", ".join(f"{_writer_words(name)} on {k} of {n} pairs" for name, k in writers.most_common()) + "."
        )
    return text


def _single_summary(f: ModelFacts) -> str:
    attention = sum(p.share("attention") for p in f.pairs)
    mlp = sum(p.share("mlp") for p in f.pairs)
    agreement = f.mean_agreement()
    return (
        _components(f)
        + "\n\n"
        + RESTORE_RULE
        + f" {escaped(f.model)} is a {escaped(f.architecture)}. Summed over pairs, all attention layers write {attention:+.2f} "
        f"into answer minus competitor and all MLPs {mlp:+.2f}"
        + "".join(f" (the {kind} write more for the competitor than for the answer)" for kind, total in
                  (("attention layers", attention), ("MLPs", mlp)) if total < 0)
        + f"; the attributions add up to the model's own logits {identity_text(f.exactness)}. "
        + (f"Attribution patching ranks the components as exact patching does with a mean Spearman correlation of "
           f"{agreement:.2f}." if agreement is not None else "Exact patching was switched off, so attribution patching is unchecked.")
    )


def _restoring_table(models: list[ModelFacts]) -> str:
    rows = []
    for m in models:
        for site in restoring_sites(m):
            rows.append([escaped(m.model), site.name, f"{site.layer} of {m.n_layers}", f"{relative(site.layer, m.n_layers):.2f}",
                         site.where, f"{site.restored} of {len(m.pairs)}", _range(site.recovered), f"{median(site.recovered):.2f}"])
    if not rows:
        return f"No component restores the answer (recovered >= {RESTORES}) on half the pairs or more."
    return table(["model", "component", "block (of)", "relative depth", "position", "pairs restored", "recovered range",
                  "median recovered"], rows)


def _writers_count_table(models: list[ModelFacts]) -> str:
    rows = [[escaped(m.model), name, f"{k} of {len(m.pairs)}"] for m in models for name, k in _top_writers(m).most_common()]
    return table(["model", "largest direct writer", "pairs"], rows)


def _writers_table(f: ModelFacts, sign: int) -> str:
    rows = []
    for p in f.pairs:
        order = p.writers if sign > 0 else p.writers[::-1]
        chosen = [s for s in order[:3] if s.value * sign > 0]
        target = p.answer.token if sign > 0 else p.competitor.token
        rows.append([escaped(p.id), tok(target), "; ".join(_site(s) for s in chosen) or "none"])
    return table(["pair", "token", "largest shares (answer minus competitor)"], rows)


def _single_answer(f: ModelFacts) -> str:
    lines = [
        "Direct logit attribution: each component's output at the last position, through the final norm with its scale frozen "
        "at the final residual, dotted with the unembedding of the answer minus that of the competitor.\n",
        _writers_table(f, +1),
        "",
    ]
    for p in f.pairs:
        lines.append(f"- {escaped(p.id)}: {_leader(p)}; the largest single share is {_winner(p)}.")
    lines += ["", "The largest single share, counted over pairs:", "", _writers_count_table([f])]
    return "\n".join(lines)


def _single_competitor(f: ModelFacts) -> str:
    lines = [_writers_table(f, -1), ""]
    for p in f.pairs:
        c = p.competitor
        gap = p.answer.logit - c.logit
        verdict = "the model still prefers the answer" if gap > 0 else "the competitor wins in the model"
        lines.append(f"- {escaped(p.id)}: the competitor is {tok(c.token)} ({verdict}: answer minus competitor {gap:+.2f}).")
    return "\n".join(lines)


def _single_patching(f: ModelFacts) -> str:
    if not any(p.patched for p in f.pairs):
        return "Exact component patching was switched off (components.exact: false); only attribution patching's estimates were recorded."
    rows = []
    for p in f.pairs:
        top = p.patched[0]
        subject = "subject" if top.position in p.subject_positions else ("last" if top.position == len(p.tokens) - 1 else "other")
        rows.append([escaped(p.id), f"{p.logit_diff_clean:.2f} / {p.logit_diff_corrupted:.2f}", _site(top), subject,
                     "; ".join(_site(s) for s in p.patched[1:3])])
    return (
        "Each component's clean output patched into the corrupted run at one position; recovered = the fraction of the logit "
        "difference (clean answer minus corrupted answer) that the patch brings back.\n\n"
        + table(["pair", "LD clean / corrupted", "largest recovered", "position", "next"], rows)
        + f"\n\nThe components that restore the answer (recovered >= {RESTORES}) on at least half the pairs:\n\n"
        + _restoring_table([f])
    )


def _single_agreement(f: ModelFacts) -> str:
    if not any(p.agreement for p in f.pairs):
        return "Exact patching was switched off: attribution patching's estimates stand unchecked."
    k = int(f.settings["top_k"])
    rows = []
    for p in f.pairs:
        a, w = p.agreement, p.atp_worst
        drop = f"{p.grad_drop_agreement['spearman']:.2f}" if p.grad_drop_agreement else "n/a"
        rows.append([escaped(p.id), str(a["sites"]), f"{a['spearman']:.2f}", f"{a[f'top{k}_overlap']:.1f}", drop,
                     f"{w.name} at {w.position} ({tok(w.token)}): exact {p.atp_worst_exact:.2f}, AtP {p.atp_worst_exact + w.value:.2f}"])
    return (
        f"Attribution patching (one forward and one backward pass) against exact patching (one forward per site): Spearman "
        f"correlation over the sites patching can change (those before the prompts differ, where both runs write the same, "
        f"and the last block's writes before the last position, which nothing reads, are exactly 0 in both and left out), overlap of the {k} sites of largest |effect|, GradDrop's Spearman against "
        "|exact|, and the site where AtP is furthest off.\n\n"
        + table(["pair", "sites compared", "Spearman", f"top-{k} overlap", "GradDrop Spearman", "furthest off"], rows)
    )


def _caveats(facts) -> str:
    return (
        "- Direct logit attribution counts only what a component writes straight into the final residual; what later "
        "components make of its output (indirect effects) is not in it, and the final norm's scale is frozen at the clean run.\n"
        "- Patching measures one component at one position at a time, clean into corrupted; components that act together or "
        "back each other up each look small alone.\n"
        "- Attribution patching is a first-order estimate: it is least reliable where a patch moves the run far (large effects, "
        "saturated attention)."
    )


SINGLE: dict[str, Callable[[ModelFacts], str]] = {
    "summary": _single_summary,
    "which components write the answer": _single_answer,
    "which components write the competitor": _single_competitor,
    "component patching": _single_patching,
    "attribution patching against exact patching": _single_agreement,
    "caveats": _caveats,
}


def _relative_peak(m: ModelFacts, kind: str) -> float | None:
    """The relative depth of the block whose attention (or MLP) writes most for the answer, averaged over pairs."""
    index = 0 if kind == "attention" else 1
    peaks = [relative(int(p.dla_blocks[index].argmax()), m.n_layers) for p in m.pairs]
    return mean(peaks) if peaks else None


def _cross_summary(models: list[ModelFacts]) -> str:
    text = " ".join(_components(m) for m in models)
    if len(models) > 1:
        text += " " + _compared(models)
    return text + "\n\n" + RESTORE_RULE + " Per model: the section 'By relative depth'."


def _compared(models: list[ModelFacts]) -> str:
    """How the models differ: where their restoring components sit, and whether the largest direct writer is one of them."""
    sentences = []
    depths = []
    for m in models:
        whole = [s for s in restoring_sites(m) if not s.component.startswith("head")]
        if whole:
            depths.append(f"{escaped(m.model)} " + " and ".join(
                f"{f'{relative(s.layer, m.n_layers):.2f}'} ({component_words(s.layer, s.component)}, {s.where})" for s in sorted(whole, key=lambda s: s.layer)))
    if depths:
        sentences.append("In relative depth ((block + 1) / number of blocks) the restoring components sit at: " + "; ".join(depths) + ".")
    for m in models:
        writers = _top_writers(m)
        if not writers:
            continue
        name, k = writers.most_common(1)[0]
        names = {s.name for s in restoring_sites(m)}
        last = max((s.layer for s in restoring_sites(m)), default=None)
        layer, words = int(name[1:].split(".", 1)[0]), _writer_words(name)
        if name in names:
            sentences.append(f"In {escaped(m.model)} the largest direct writer ({words}, {k} of {len(m.pairs)} pairs) is itself a component that restores the answer.")
        elif last is not None and layer > last:
            sentences.append(
                f"In {escaped(m.model)} the largest direct writer ({words}, {k} of {len(m.pairs)} pairs) does not restore the answer "
                f"alone and sits {layer - last} block{'s' if layer - last > 1 else ''} after the last component that does.")
        else:
            sentences.append(f"In {escaped(m.model)} the largest direct writer ({words}, {k} of {len(m.pairs)} pairs) does not restore the answer alone.")
    return " ".join(sentences)


def _cross_depth(models: list[ModelFacts]) -> str:
    rows = [[escaped(m.model), str(m.n_layers), _depth(_relative_peak(m, "attention")), _depth(_relative_peak(m, "mlp")),
             _depth(mean([relative(p.first_top1("post"), m.n_layers) or 1.0 for p in m.pairs]))] for m in models]
    return (
        f"The components that restore the answer (recovered >= {RESTORES}) on at least half the pairs, with their block "
        "(counted from 0) and relative depth ((block + 1) / number of blocks):\n\n"
        + _restoring_table(models)
        + "\n\nThe largest direct writer (direct logit attribution of answer minus competitor at the last position), counted "
        "over pairs:\n\n"
        + _writers_count_table(models)
        + "\n\nRelative depth of the attention and the MLP that write most for the answer, and of the first block after which "
        "the lens ranks the answer first (1.00 where it never does inside the blocks), averaged over pairs.\n\n"
        + table(["model", "blocks", "top attention", "top MLP", "answer first top-1"], rows)
    )


def _cross_agreement(models: list[ModelFacts]) -> str:
    rows = []
    for m in models:
        values = [p.agreement for p in m.pairs if p.agreement]
        if not values:
            rows.append([escaped(m.model), "n/a", "n/a", "n/a"])
            continue
        k = int(m.settings["top_k"])
        spearman = [a["spearman"] for a in values]
        rows.append([escaped(m.model), f"{min(spearman):.2f}-{max(spearman):.2f}", f"{mean(spearman):.2f}",
                     f"{mean(a[f'top{k}_overlap'] for a in values):.2f}"])
    return table(["model", "Spearman range", "mean Spearman", "mean top-k overlap"], rows)


def _cross_differences(models: list[ModelFacts]) -> str:
    lines = ([_compared(models), ""] if len(models) > 1 else [])
    for m in models:
        mlp_led = sum(1 for p in m.pairs if p.share("mlp") > p.share("attention"))
        lines.append(
            f"- {escaped(m.model)}: summed over blocks, the MLPs write more into answer minus competitor than the attention "
            f"in {mlp_led} of {len(m.pairs)} pairs (attention {sum(p.share('attention') for p in m.pairs):+.2f}, MLPs "
            f"{sum(p.share('mlp') for p in m.pairs):+.2f} over all pairs).")
    return "\n".join(lines)


CROSS: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _cross_summary,
    "by relative depth": _cross_depth,
    "agreement of attribution patching": _cross_agreement,
    "differences between models": _cross_differences,
    "caveats": _caveats,
}


def _meta_answer(models: list[ModelFacts]) -> str:
    parts = []
    for m in models:
        whole = sorted((s for s in restoring_sites(m) if not s.component.startswith("head")), key=lambda s: s.layer)
        parts.append(
            f"in {escaped(m.model)} " + (" and ".join(f"{component_words(s.layer, s.component)} {_where_words(s.where)}" for s in whole)
                                         or "no single component")
            + (" restore" if len(whole) > 1 else " restores") + " the answer when patched")
    return f"The answer this critique weighs (restores: recovered >= {RESTORES} on at least half the pairs): " + "; ".join(parts) + "."


def _meta_summary(models: list[ModelFacts]) -> str:
    pairs = sum(len(m.pairs) for m in models)
    return _meta_answer(models) + "\n\n" + (
        f"Experiment 004 splits each block into its attention, its MLP and its heads and asks, on {pairs} pairs over "
        f"{len(models)} models, which of them write the answer (direct logit attribution), which cause it (patching from the "
        "clean run into the corrupted one) and whether the cheap linear estimate (attribution patching) finds the same ones."
    )


def _meta_measures(models: list[ModelFacts]) -> str:
    worst = max(m.exactness for m in models)
    return (
        "Direct logit attribution is exact bookkeeping: the shares plus the embedding and the biases add up to the model's "
        f"logit ({identity_text(worst)} here), but only with the final norm's scale frozen, so a share says what a component "
        "writes along the answer's direction, not what would happen without it. Patching says what a component's clean output "
        "alone restores in the corrupted run; attribution patching approximates that to first order."
    )


def _meta_threats(models: list[ModelFacts]) -> str:
    return (
        f"- {sum(len(m.pairs) for m in models)} (model, pair) runs on the same few pairs; each pair's corrupted prompt swaps one "
        "subject, so components that read other tokens are not probed.\n"
        "- The competitor is the model's own top other token at the clean prompt; a share against it is not a share against "
        "the corrupted answer that patching measures.\n"
        "- Heads are attributed through their output projection; models whose attention hides its heads get one share per "
        "block."
    )


def _meta_next(models: list[ModelFacts]) -> str:
    return (
        "- Path patching from the heads with the largest shares to the MLPs after them, to separate direct from indirect effects.\n"
        "- Mean ablation of the top components over many prompts of the relation, for intervals.\n"
        "- Attribution patching of queries and keys with AtP*'s saturation fix, where attention patterns move."
    )


META: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _meta_summary,
    "what the component measures show": _meta_measures,
    "threats to validity": _meta_threats,
    "next experiments": _meta_next,
}

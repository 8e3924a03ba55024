"""Experiment 004's offline analyst: the sections of its three evaluations.

Every sentence is a figure computed from the recorded outputs (``workflow.exp004.analysis``)
put into words by fixed rules: which components write the answer and which its competitor,
what patching each recovers, and how far attribution patching can stand in for exact
patching.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import mean

from workflow.evaluation.text import escaped, identity_text, table, tok
from workflow.exp004.analysis import ModelFacts, PairFacts, Site, relative
from workflow.exp004.digest import site_text


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
    return f"{top.name} ({top.value:+.2f})"


def _single_summary(f: ModelFacts) -> str:
    attention = sum(p.share("attention") for p in f.pairs)
    mlp = sum(p.share("mlp") for p in f.pairs)
    heads = f"{f.n_heads} heads per block" if f.heads_exposed else "attention per block only (heads not exposed)"
    agreement = f.mean_agreement()
    return (
        f"On {len(f.pairs)} pairs, {escaped(f.model)} ({escaped(f.architecture)}, {f.n_layers} blocks, {heads}) was decomposed at the clean "
        f"prompt's last position into what each block's attention and MLP write into the logit of the answer minus that of "
        f"the model's top competing token. Summed over pairs, the attention layers write {attention:+.2f} and the MLPs "
        f"{mlp:+.2f}; the attributions add up to the model's own logits {identity_text(f.exactness)}. "
        + (f"Attribution patching ranks the components as exact patching does with a mean Spearman correlation of "
           f"{agreement:.2f}." if agreement is not None else "Exact patching was switched off, so attribution patching is unchecked.")
    )


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
    parts = [f"{escaped(m.model)}: attention {sum(p.share('attention') for p in m.pairs):+.2f}, MLPs {sum(p.share('mlp') for p in m.pairs):+.2f}"
             for m in models]
    return (
        f"{len(models)} models, the same pairs. What attention and MLPs write into answer minus competitor, summed over pairs: "
        + "; ".join(parts) + "."
    )


def _cross_depth(models: list[ModelFacts]) -> str:
    rows = [[escaped(m.model), str(m.n_layers), _depth(_relative_peak(m, "attention")), _depth(_relative_peak(m, "mlp")),
             _depth(mean([relative(p.first_top1("post"), m.n_layers) or 1.0 for p in m.pairs]))] for m in models]
    return (
        "Relative depth (block + 1 over the number of blocks) of the attention and the MLP that write most for the answer, "
        "and of the first block after which the lens ranks the answer first (1.00 where it never does inside the blocks), "
        "averaged over pairs.\n\n"
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
    lines = []
    for m in models:
        mlp_led = sum(1 for p in m.pairs if p.share("mlp") > p.share("attention"))
        lines.append(f"- {escaped(m.model)}: the MLPs write more for the answer than the attention in {mlp_led} of {len(m.pairs)} pairs.")
    return "\n".join(lines)


CROSS: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _cross_summary,
    "by relative depth": _cross_depth,
    "agreement of attribution patching": _cross_agreement,
    "differences between models": _cross_differences,
    "caveats": _caveats,
}


def _meta_summary(models: list[ModelFacts]) -> str:
    pairs = sum(len(m.pairs) for m in models)
    return (
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
        "- A handful of pairs of one relation; the pairs' corrupted prompts swap one subject, so components that read other "
        "tokens are not probed.\n"
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

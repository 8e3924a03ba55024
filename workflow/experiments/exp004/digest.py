"""Experiment 004's digests: which components write the answer on one model, compact for an
LLM's prompt.

Per pair: the prompts, the answer, the model's top competitor and the corrupted answer with
their logits; where the lens after attention and after the MLP first ranks the answer
first; the components that write most for the answer and most for the competitor (direct
logit attribution of answer minus competitor at the last position), the attention's and
the MLPs' totals; the sites where exact patching recovers most; attribution patching's
agreement with it and where it is furthest off. The per-block ranks are thinned evenly
(the first and last always stay) until the digest fits its budget, and it says so.
"""

from __future__ import annotations

from workflow.evaluation.text import fitted, identity_text, source_text
from workflow.experiments.exp004.analysis import ModelFacts, PairFacts, Site

SHOWN = 5  # components listed for and against the answer, and patching sites


def _block(block: int | None) -> str:
    return "never" if block is None else str(block)


def site_text(site: Site) -> str:
    where = "" if site.position is None else f" at position {site.position} ({site.token!r})"
    return f"{site.name}{where} {site.value:+.2f}"


def agreement_text(pair: PairFacts, top_k: int) -> str:
    if not pair.agreement:
        return "exact patching off (components.exact: false): attribution patching is not checked"
    a = pair.agreement
    text = (f"AtP against exact patching over the {a['sites']} sites patching can change: Spearman {a['spearman']:.2f}, top-{top_k} overlap "
            f"{a[f'top{top_k}_overlap']:.1f}")
    if pair.grad_drop_agreement:
        g = pair.grad_drop_agreement
        text += f"; GradDrop against |exact|: Spearman {g['spearman']:.2f}, top-{top_k} overlap {g[f'top{top_k}_overlap']:.1f}"
    if pair.atp_worst is not None:
        w = pair.atp_worst
        text += (f"; furthest off at {w.name} position {w.position} ({w.token!r}): exact {pair.atp_worst_exact:.2f}, "
                 f"AtP {pair.atp_worst_exact + w.value:.2f}")
    return text


def _pair_block(facts: ModelFacts, pair: PairFacts, stride: int) -> str:
    t = pair.targets
    n = facts.n_layers
    lines = [
        f"### pair {pair.id}",
        f"clean {pair.clean_prompt!r} -> {pair.clean_answer!r}; corrupted {pair.corrupted_prompt!r} -> {pair.corrupted_answer!r}",
        f"tokens {pair.tokens}; subject positions {pair.subject_positions}",
        "logits at the last position of the clean prompt: "
        + ", ".join(f"{role.replace('_', ' ')} {v.token!r} {v.logit:.2f}" for role, v in t.items()),
        f"logit difference (clean answer minus corrupted answer): clean run {pair.logit_diff_clean:.2f}, corrupted run "
        f"{pair.logit_diff_corrupted:.2f}",
        f"lens: the answer is first top-1 after the attention of block {_block(pair.first_top1('mid'))}, after the MLP of "
        f"block {_block(pair.first_top1('post'))} (of blocks 0-{n - 1})",
    ]
    blocks = [b for b in range(n) if b % stride == 0 or b == n - 1]
    lines.append("  answer rank after attention / after MLP by block: "
                 + ", ".join(f"{b}: {pair.answer.mid_rank[b]}/{pair.answer.post_rank[b]}" for b in blocks))
    answer, competitor = t["answer"], t["competitor"]
    lines.append(
        f"direct logit attribution of answer minus competitor ({answer.logit - competitor.logit:+.2f} in the model): "
        f"embedding {answer.embedding - competitor.embedding:+.2f}, biases {answer.constant - competitor.constant:+.2f}, "
        f"all attention {pair.share('attention'):+.2f}, all MLPs {pair.share('mlp'):+.2f}"
    )
    lines.append("  most for the answer: " + "; ".join(site_text(s) for s in pair.writers[:SHOWN]))
    lines.append("  most for the competitor: " + "; ".join(site_text(s) for s in pair.writers[::-1][:SHOWN]))
    if pair.patched:
        lines.append("exact patching, largest |recovered|: " + "; ".join(site_text(s) for s in pair.patched[:SHOWN]))
    lines.append(agreement_text(pair, int(facts.settings["top_k"])))
    return "\n".join(lines)


def model_digest(facts: ModelFacts, max_chars: int) -> str:
    heads = (f"{facts.n_heads} heads per block attributed and patched one by one" if facts.heads_exposed
             else f"attention per block only: {facts.heads_note}")
    header = "\n".join([
        f"## model {facts.model}",
        f"{facts.architecture}, {facts.n_layers} blocks, d_model {facts.d_model}, {facts.dtype} on {facts.device}; "
        f"source {source_text(facts.source)}; {heads}",
        f"attributions add up to the model's logits {identity_text(facts.exactness)} (checked against "
        f"{facts.exactness_tolerance:g} times the logits' size)",
        f"{len(facts.pairs)} pairs; settings {facts.settings}",
    ])
    return fitted(header, lambda stride: [_pair_block(facts, p, stride) for p in facts.pairs], facts.n_layers, max_chars)

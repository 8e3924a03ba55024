"""Figures computed from experiment 003's outputs, shared by its digests, offline analyst and
plots: where each generated token settles (the layer from which the lens's top-1 stays the
token), by word class.

Everything here is a deterministic function of ``results/003/output-{model}.json`` and its
records. A generated token's class comes from its text and the token before it:
``special`` (the tokenizer's special tokens), ``continuation`` (a piece that continues the
word before it: no leading space after a letter or digit), ``function`` (an English
closed-class word: FUNCTION_WORDS), ``content`` (any other word), ``other`` (punctuation,
digits, whitespace).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from workflow.evaluation.facts import ModelDescription
from workflow.lens.records import read_records

CLASSES = ("content", "function", "continuation", "other", "special")

# English closed-class words: articles, determiners, pronouns, prepositions, conjunctions,
# auxiliary and modal verbs, and a few particles.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no all both either neither such what which whose
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
myself yourself himself herself itself ourselves themselves who whom
of in on at by for with from to into onto upon about above below over under between among through
during before after since until against within without across along around behind beyond near off out up down
and or but nor so yet if then than because although though while whereas unless whether as
is am are was were be been being do does did done have has had having
will would shall should can could may might must
not there here also too very just only
""".split())


def word_class(token: str, previous: str | None, special: bool) -> str:
    if special:
        return "special"
    text = token.strip()
    if not text:
        return "other"
    starts_word = token[0].isspace() or token[0] == "▁" or previous is None or not (previous[-1:].isalnum())
    if not starts_word and text[0].isalnum():
        return "continuation"
    word = text.strip("▁").lower()
    if not any(ch.isalpha() for ch in word):
        return "other"
    return "function" if word in FUNCTION_WORDS else "content"


@dataclass
class TokenFacts:
    index: int
    token: str
    word_class: str
    model_prob: float
    first: dict[str, int | None]  # per lens: the first layer where the token is top-1
    stable: dict[str, int | None]  # per lens: the layer from which it stays top-1


@dataclass
class ProbeFacts:
    id: str
    prompt: str
    text: str
    stopped: str
    tokens: list[TokenFacts]
    # [layer][generated index] the logit lens's probability of the generated token, and
    # whether it is the lens's top-1 there (for pictures)
    grid: list[list[float]] = field(repr=False, default_factory=list)
    top1: list[list[bool]] = field(repr=False, default_factory=list)


@dataclass
class ClassStats:
    count: int
    median_stable: float | None  # relative depth (layer / layers)
    median_first: float | None


@dataclass
class ModelFacts(ModelDescription):
    lenses: list[str]
    max_new_tokens: int
    identity_max_prob_diff: float
    probes: list[ProbeFacts]
    # per lens, per class
    by_class: dict[str, dict[str, ClassStats]]
    # per lens: P(a content word settles deeper than a function word) + half the ties
    # (the Mann-Whitney statistic over pairs), and the pair counts; None without both classes
    content_later: dict[str, float | None]

    @property
    def n_tokens(self) -> int:
        return sum(len(p.tokens) for p in self.probes)

    def relative(self, layer: int | None) -> float | None:
        return None if layer is None else layer / self.n_layers


def _median(values: list[float]) -> float | None:
    return median(values) if values else None


def superiority(deeper: list[float], shallower: list[float]) -> float | None:
    """P(x > y) + P(x = y) / 2 for x from ``deeper`` and y from ``shallower``."""
    if not deeper or not shallower:
        return None
    wins = sum((x > y) + 0.5 * (x == y) for x in deeper for y in shallower)
    return wins / (len(deeper) * len(shallower))


def model_facts(summary: str | Path, records: str | Path) -> ModelFacts:
    document = json.loads(Path(summary).read_text(encoding="utf-8"))
    n_layers = int(document["n_layers"])
    lenses = list(document["lenses"])
    frame = read_records(str(records))
    logit = frame[frame["lens"] == "logit"]
    probes = []
    for p in document["probes"]:
        tokens, previous = [], None
        for t in p["tokens"]:
            first = {lens: t["first_top1_layer" if lens == "logit" else f"{lens}_first_top1_layer"] for lens in lenses}
            stable = {lens: t["stable_top1_layer" if lens == "logit" else f"{lens}_stable_top1_layer"] for lens in lenses}
            tokens.append(TokenFacts(t["index"], t["token"], word_class(t["token"], previous, t["special"]), float(t["model_prob"]), first, stable))
            previous = t["token"]
        rows = logit[logit["probe"] == p["id"]]
        grid = [[float("nan")] * len(tokens) for _ in range(n_layers + 1)]
        top1 = [[False] * len(tokens) for _ in range(n_layers + 1)]
        for layer, position, prob, rank in zip(rows["layer"], rows["position"], rows["answer_prob"], rows["answer_rank"]):
            grid[int(layer)][int(position)] = float(prob)
            top1[int(layer)][int(position)] = int(rank) == 1
        probes.append(ProbeFacts(p["id"], p["prompt"], p["text"], p["stopped"], tokens, grid, top1))
    by_class: dict[str, dict[str, ClassStats]] = {}
    content_later: dict[str, float | None] = {}
    for lens in lenses:
        by_class[lens] = {}
        for name in CLASSES:
            members = [t for p in probes for t in p.tokens if t.word_class == name]
            by_class[lens][name] = ClassStats(
                len(members),
                _median([t.stable[lens] / n_layers for t in members if t.stable[lens] is not None]),
                _median([t.first[lens] / n_layers for t in members if t.first[lens] is not None]),
            )
        depth = {name: [t.stable[lens] / n_layers for p in probes for t in p.tokens if t.word_class == name and t.stable[lens] is not None]
                 for name in ("content", "function")}
        content_later[lens] = superiority(depth["content"], depth["function"])
    return ModelFacts(
        **ModelDescription.read(document),
        lenses=lenses,
        max_new_tokens=int(document["generation"]["max_new_tokens"]),
        identity_max_prob_diff=float(document["identity_check"].get("max_abs_prob_diff", 0.0)),
        probes=probes,
        by_class=by_class,
        content_later=content_later,
    )

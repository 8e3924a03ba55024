"""Figures computed from experiment 004's outputs, shared by its digests, offline analyst and
plots: which components write the answer and which the competitor (direct logit
attribution of answer minus competitor at the last position), which the patching recovers,
where the sublayer lens first reads the answer, and how attribution patching agrees with
exact patching.

Everything here is a deterministic function of ``results/004/output-{model}.json`` and its
records. Torch-free.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workflow.evaluation.facts import ModelDescription
from workflow.experiments.exp004.records import TARGETS, read_component_records

KINDS = ("attention", "mlp")


@dataclass
class Site:
    layer: int
    component: str  # attention, mlp, head{h}, attention_bias
    position: int | None  # None: direct logit attribution (the last position)
    token: str
    value: float

    @property
    def name(self) -> str:
        return f"L{self.layer}.{self.component}"


@dataclass
class TargetFacts:
    token: str
    logit: float
    embedding: float  # the embedding's direct share of the logit
    constant: float  # the final norm's and unembedding's biases
    mid_rank: list[int]  # the lens between attention and MLP, per block
    post_rank: list[int]  # after the block
    mid_prob: list[float]
    post_prob: list[float]


@dataclass
class PairFacts:
    id: str
    clean_prompt: str
    corrupted_prompt: str
    clean_answer: str
    corrupted_answer: str
    tokens: list[str]
    subject_positions: list[int]
    targets: dict[str, TargetFacts]
    logit_diff_clean: float
    logit_diff_corrupted: float
    exactness: float
    # Direct logit attribution of answer minus competitor at the last position.
    dla_blocks: np.ndarray  # [2, L]: attention, MLP
    dla_heads: np.ndarray  # [H, L]
    exact_blocks: np.ndarray | None  # [2, L, T] recovered fraction, or None without exact patching
    exact_heads: np.ndarray | None  # [H, L, T]
    atp_blocks: np.ndarray  # [2, L, T]
    atp_heads: np.ndarray  # [H, L, T]
    writers: list[Site]  # every component's DLA of answer minus competitor, largest first
    patched: list[Site]  # exact patching's sites by |recovered|, largest first (empty without it)
    agreement: dict[str, float] | None  # AtP against exact: spearman, top-k overlap, sites
    grad_drop_agreement: dict[str, float] | None
    atp_worst: Site | None  # where AtP is furthest from exact patching (value: AtP minus exact)
    atp_worst_exact: float | None

    @property
    def competitor(self) -> TargetFacts:
        return self.targets["competitor"]

    @property
    def answer(self) -> TargetFacts:
        return self.targets["answer"]

    def first_top1(self, where: str) -> int | None:
        """The first block after whose attention (``mid``) or MLP (``post``) the lens ranks the answer first."""
        ranks = self.answer.mid_rank if where == "mid" else self.answer.post_rank
        return next((layer for layer, rank in enumerate(ranks) if rank == 1), None)

    def share(self, kind: str) -> float:
        """What the blocks' attention (or MLP) write into answer minus competitor, all layers."""
        return float(self.dla_blocks[KINDS.index(kind)].sum())


@dataclass
class ModelFacts(ModelDescription):
    heads_exposed: bool
    n_heads: int
    heads_note: str | None
    exactness: float  # the largest |sum of attributions - model logit| over pairs
    exactness_tolerance: float
    settings: dict[str, Any]
    pairs: list[PairFacts]

    def mean_agreement(self, key: str = "spearman") -> float | None:
        values = [p.agreement[key] for p in self.pairs if p.agreement]
        return float(np.mean(values)) if values else None


def _grid(frame, measure: str, components: list[str], n_layers: int, n_positions: int) -> np.ndarray:
    grid = np.full((len(components), n_layers, n_positions), np.nan)
    index = {c: i for i, c in enumerate(components)}
    sub = frame[frame["component"].isin(components)]
    for component, layer, position, value in zip(sub["component"], sub["layer"], sub["position"], sub[measure]):
        grid[index[component], int(layer), int(position)] = float(value)
    return grid


def _pair_facts(p: dict[str, Any], rows, n_layers: int, n_heads: int, top_k: int) -> PairFacts:
    n_positions = len(p["clean_tokens"])
    last = n_positions - 1
    heads = [f"head{h}" for h in range(n_heads)]
    targets = {
        role: TargetFacts(t["token"], float(t["logit"]), float(t["dla_embedding"]), float(t["dla_constant"]),
                          [int(r) for r in t["mid_rank"]], [int(r) for r in t["post_rank"]],
                          [float(x) for x in t["mid_prob"]], [float(x) for x in t["post_prob"]])
        for role, t in p["targets"].items()
    }
    at_last = rows[rows["position"] == last]
    diff = at_last["dla_answer"] - at_last["dla_competitor"]
    writers = sorted(
        (Site(int(layer), component, None, p["clean_tokens"][last], float(value))
         for layer, component, value in zip(at_last["layer"], at_last["component"], diff)),
        key=lambda s: (-s.value, s.layer, s.component),
    )
    dla_blocks = np.zeros((2, n_layers))
    dla_heads = np.full((n_heads, n_layers), np.nan)
    for s in writers:
        if s.component in KINDS:
            dla_blocks[KINDS.index(s.component), s.layer] = s.value
        elif s.component.startswith("head"):
            dla_heads[int(s.component[4:]), s.layer] = s.value
    has_exact = bool(rows["exact"].notna().any())
    patched_rows = rows[rows["exact"].notna()]
    patched = sorted(
        (Site(int(layer), component, int(position), token, float(value))
         for layer, component, position, token, value in zip(
             patched_rows["layer"], patched_rows["component"], patched_rows["position"], patched_rows["token"], patched_rows["exact"])),
        key=lambda s: (-abs(s.value), s.layer, s.component, s.position),
    )
    worst, worst_exact = None, None
    both = rows[rows["exact"].notna() & rows["atp"].notna()]
    if len(both):
        gap = (both["atp"] - both["exact"]).abs().to_numpy()
        i = int(np.argmax(gap))
        row = both.iloc[i]
        worst = Site(int(row["layer"]), row["component"], int(row["position"]), row["token"], float(row["atp"] - row["exact"]))
        worst_exact = float(row["exact"])
    return PairFacts(
        id=p["id"], clean_prompt=p["clean_prompt"], corrupted_prompt=p["corrupted_prompt"], clean_answer=p["clean_answer"],
        corrupted_answer=p["corrupted_answer"], tokens=list(p["clean_tokens"]), subject_positions=list(p["subject_positions"]),
        targets=targets, logit_diff_clean=float(p["logit_diff_clean"]), logit_diff_corrupted=float(p["logit_diff_corrupted"]),
        exactness=float(p["exactness"]["max_abs_logit_diff"]),
        dla_blocks=dla_blocks, dla_heads=dla_heads,
        exact_blocks=_grid(rows, "exact", list(KINDS), n_layers, n_positions) if has_exact else None,
        exact_heads=_grid(rows, "exact", heads, n_layers, n_positions) if has_exact else None,
        atp_blocks=_grid(rows, "atp", list(KINDS), n_layers, n_positions),
        atp_heads=_grid(rows, "atp", heads, n_layers, n_positions),
        writers=writers, patched=patched[: max(top_k, 10)],
        agreement=p.get("atp_agreement"), grad_drop_agreement=p.get("grad_drop_agreement"),
        atp_worst=worst, atp_worst_exact=worst_exact,
    )


def model_facts(summary: str | Path, records: str | Path) -> ModelFacts:
    document = json.loads(Path(summary).read_text(encoding="utf-8"))
    frame = read_component_records(str(records), document)
    n_layers = int(document["n_layers"])
    heads = document["heads"]
    settings = document["components"]
    pairs = [
        _pair_facts(p, frame[frame["pair"] == p["id"]], n_layers, int(heads["n_heads"]), int(settings["top_k"]))
        for p in document["pairs"]
    ]
    check = document["exactness_check"]
    return ModelFacts(
        **ModelDescription.read(document),
        heads_exposed=bool(heads["exposed"]), n_heads=int(heads["n_heads"]), heads_note=heads.get("note"),
        exactness=float(check["max_abs_logit_diff"]), exactness_tolerance=float(check["tolerance"]),
        settings=settings, pairs=pairs,
    )


RESTORES = 0.5  # exact patching's recovered at or above this counts as "restores the answer"


@dataclass
class RestoringSite:
    """A component at a kind of position whose clean output, patched alone into the corrupted run,
    restores the answer (recovered >= RESTORES) on at least half the pairs."""

    layer: int
    component: str  # attention, mlp, head{h}
    where: str  # "subject" (the best of the subject tokens) or "last" (the last position)
    recovered: list[float]  # per pair that has the site

    @property
    def restored(self) -> int:
        return sum(v >= RESTORES for v in self.recovered)

    @property
    def name(self) -> str:
        return f"L{self.layer}.{self.component}"


def restoring_sites(m: ModelFacts) -> list[RestoringSite]:
    """Exact patching's components (attention, MLP and heads, each block) at the subject tokens or the
    last position that restore the answer on at least half the pairs, most restoring first (then by
    median recovered); [] without exact patching."""
    found: dict[tuple[int, str, str], list[float]] = {}
    for p in m.pairs:
        if p.exact_blocks is None:
            continue
        last = len(p.tokens) - 1
        subject = [q for q in p.subject_positions if q != last]
        grids = [(kind, p.exact_blocks[i]) for i, kind in enumerate(KINDS)]
        if p.exact_heads is not None:
            grids += [(f"head{h}", p.exact_heads[h]) for h in range(p.exact_heads.shape[0])]
        for component, grid in grids:
            for layer in range(grid.shape[0]):
                for where, positions in (("subject", subject), ("last", [last])):
                    values = [float(grid[layer, q]) for q in positions if not math.isnan(grid[layer, q])]
                    if values:
                        found.setdefault((layer, component, where), []).append(max(values))
    sites = [RestoringSite(layer, component, where, values) for (layer, component, where), values in found.items()]
    sites = [s for s in sites if s.restored * 2 >= len(m.pairs) and s.restored]
    return sorted(sites, key=lambda s: (-s.restored, -float(np.median(s.recovered)), s.layer, s.component, s.where))


def component_words(layer: int, component: str) -> str:
    """'the MLP of block 3', 'the attention of block 12', 'head 2 of block 12'."""
    if component == "mlp":
        return f"the MLP of block {layer}"
    if component == "attention":
        return f"the attention of block {layer}"
    if component.startswith("head"):
        return f"head {component[4:]} of block {layer}"
    return f"the {component.replace('_', ' ')} of block {layer}"


def relative(layer: int | None, n_layers: int) -> float | None:
    """A block's relative depth: (layer + 1) / number of blocks (1.0 = the last block)."""
    return None if layer is None else (layer + 1) / n_layers


def finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


__all__ = ["TARGETS", "KINDS", "RESTORES", "Site", "TargetFacts", "PairFacts", "ModelFacts", "RestoringSite", "model_facts",
           "restoring_sites", "component_words", "relative", "finite"]

"""Figures computed from experiment 001's outputs, shared by digests and the offline analyst.

Everything here is a deterministic function of ``output-{model}.json`` and its
records CSV (logit-lens rows, last position unless stated otherwise).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workflow.evaluation.facts import ModelDescription
from workflow.evaluation import statistics
from workflow.lens.records import load_checked

BANDS = ("early", "middle", "late")
CONFIDENT_NATS = 1.0  # a distribution with entropy below this is "collapsed"
NEAR_FINAL_NATS = 1.0  # KL to final below this counts as "close to the final answer"


def band_of(layer: int, n_layers: int) -> str:
    """early: relative depth < 1/3; middle: < 2/3; late: the rest."""
    depth = layer / n_layers
    return "early" if depth < 1 / 3 else "middle" if depth < 2 / 3 else "late"


@dataclass
class ProbeFacts:
    id: str
    prompt: str
    answer: str
    style: str
    reverse_of: str | None
    n_tokens: int
    final_top1: str
    final_top1_prob: float
    final_answer_prob: float
    final_answer_rank: int
    correct: bool
    first_top1_layer: int | None
    stable_top1_layer: int | None
    entropy_layer0: float
    entropy_final: float
    collapse_layer: int  # layer after the largest one-layer entropy drop
    collapse_drop: float
    first_confident_layer: int | None  # first layer after the embedding with entropy < CONFIDENT_NATS
    near_final_layer: int | None  # first layer from which KL to final stays < NEAR_FINAL_NATS
    best_rank: int
    best_rank_layer: int
    trajectory: list[dict[str, Any]] = field(default_factory=list)  # last position, per layer
    warnings: list[str] = field(default_factory=list)
    # Where the tuned lens puts the answer at the last position (None without a tuned lens).
    tuned_first_top1_layer: int | None = None
    tuned_stable_top1_layer: int | None = None
    # Per lens after the logit lens (tuned, patchscope): (first top-1 layer, stays from layer).
    lens_layers: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    relation: str | None = None
    n_answer_tokens: int = 1
    answer_logprob: float | None = None  # the whole answer, teacher-forced
    answer_greedy: bool | None = None  # greedy decoding gives the whole answer
    top1_prob_by_temperature: list[float] = field(default_factory=list)
    input_token: str = ""  # the prompt's last token (the position every per-layer figure here is read at)


@dataclass
class ModelFacts(ModelDescription):
    vocab_size: int
    lens: dict[str, Any]
    identity_max_prob_diff: float
    probes: list[ProbeFacts]
    middle_tokens: list[tuple[str, int]]  # most frequent top-1 tokens in the middle band, last position
    copy_rate: dict[str, float]  # per band: share of rows whose top-1 repeats the input token
    answer_rate: dict[str, float]  # per band: share of (probe, layer) whose top-1 is the answer
    lenses: list[str] = field(default_factory=lambda: ["logit"])
    temperatures: list[float] = field(default_factory=list)
    # Per lens, per layer: the expected calibration error of the top-1 probability at the
    # last position (temperature 1).
    layer_ece: dict[str, list[float]] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)  # ``probe_statistics``
    # Through the tuned lens, per layer: (layer, ECE at temperature 1, the temperature with the
    # lowest ECE, that ECE), from the JSON's tuned_calibration bins.
    tuned_temperature: list[tuple[int, float, float, float]] = field(default_factory=list)
    # Through the tuned lens, per layer: the share of probes whose top-1 at the last position is the
    # answer (from the same bins; temperature does not change the top-1).
    tuned_accuracy: list[float] = field(default_factory=list)

    @property
    def n_correct(self) -> int:
        return sum(p.correct for p in self.probes)

    def probe(self, probe_id: str) -> ProbeFacts | None:
        return next((p for p in self.probes if p.id == probe_id), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stays_below(values: list[float], threshold: float) -> int | None:
    start = None
    for layer in range(len(values) - 1, -1, -1):
        if values[layer] >= threshold:
            break
        start = layer
    return start


def probe_facts(summary: dict[str, Any], rows: pd.DataFrame) -> ProbeFacts:
    last = rows[rows["position"] == rows["position"].max()].sort_values("layer")
    entropy = last["entropy"].tolist()
    drops = [entropy[i - 1] - entropy[i] for i in range(1, len(entropy))] or [0.0]
    collapse = max(range(len(drops)), key=lambda i: (drops[i], -i))
    ranks = last["answer_rank"].tolist()
    best = min(range(len(ranks)), key=lambda i: (ranks[i], i))
    # Layer 0 is skipped: with tied embeddings it decodes to the input token itself.
    confident = next((i for i, e in enumerate(entropy) if i > 0 and e < CONFIDENT_NATS), None)
    trajectory = [
        {
            "layer": int(r.layer),
            "top1": r.top1_token,
            "top1_prob": float(r.top1_prob),
            "topk": list(zip(r.topk_tokens, r.topk_probs)),
            "entropy": float(r.entropy),
            "answer_prob": float(r.answer_prob),
            "answer_rank": int(r.answer_rank),
            "kl_to_final": float(r.kl_to_final),
        }
        for r in last.itertuples()
    ]
    return ProbeFacts(
        id=summary["id"],
        prompt=summary["prompt"],
        answer=summary["answer"],
        style=summary.get("style") or "plain",
        reverse_of=summary.get("reverse_of"),
        n_tokens=len(summary["input_ids"]),
        final_top1=summary["final_top1_token"],
        final_top1_prob=summary["final_top1_prob"],
        final_answer_prob=summary["final_answer_prob"],
        final_answer_rank=summary["final_answer_rank"],
        correct=summary["final_top1_token"] == summary["answer_token"],
        first_top1_layer=summary["first_top1_layer"],
        stable_top1_layer=summary["stable_top1_layer"],
        entropy_layer0=entropy[0],
        entropy_final=entropy[-1],
        collapse_layer=collapse + 1,
        collapse_drop=drops[collapse],
        first_confident_layer=confident,
        near_final_layer=_stays_below(last["kl_to_final"].tolist(), NEAR_FINAL_NATS),
        best_rank=int(ranks[best]),
        best_rank_layer=best,
        trajectory=trajectory,
        warnings=list(summary.get("warnings", [])),
        tuned_first_top1_layer=(summary.get("tuned") or {}).get("first_top1_layer"),
        tuned_stable_top1_layer=(summary.get("tuned") or {}).get("stable_top1_layer"),
        lens_layers={lens: (summary[lens]["first_top1_layer"], summary[lens]["stable_top1_layer"])
                     for lens in ("tuned", "patchscope") if summary.get(lens)},
        relation=summary.get("relation"),
        n_answer_tokens=len(summary.get("answer_token_ids") or [summary["answer_token_id"]]),
        answer_logprob=summary.get("answer_logprob"),
        answer_greedy=summary.get("answer_greedy"),
        top1_prob_by_temperature=list(summary.get("final_top1_prob_by_temperature") or []),
        input_token=str(last["input_token"].iloc[0]),
    )


def model_facts(summary_path: str | Path, records_path: str | Path) -> ModelFacts:
    summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    records = load_checked(records_path, summary_path)
    layer_ece = lens_calibration(records, summary)
    records = records[records["lens"] == "logit"]
    n_layers = int(summary["n_layers"])
    by_probe = dict(tuple(records.groupby("probe", sort=False)))
    probes = [probe_facts(p, by_probe[p["id"]]) for p in summary["probes"]]

    bands = records["layer"].map(lambda layer: band_of(int(layer), n_layers))
    copies = records["top1_token"] == records["input_token"]
    copy_rate = {b: float(copies[bands == b].mean()) if (bands == b).any() else 0.0 for b in BANDS}
    answer_rate: dict[str, float] = {}
    middle: Counter[str] = Counter()
    for band in BANDS:
        hits = total = 0
        for p in probes:
            for step in p.trajectory:
                if band_of(step["layer"], n_layers) == band:
                    total += 1
                    hits += step["answer_rank"] == 1
                    if band == "middle":
                        middle[step["top1"]] += 1
        answer_rate[band] = hits / total if total else 0.0
    facts = ModelFacts(
        **ModelDescription.read(summary),
        vocab_size=int(summary["vocab_size"]),
        lens=summary["lens"],
        identity_max_prob_diff=float(summary["identity_check"]["max_abs_prob_diff"]),
        probes=probes,
        middle_tokens=sorted(middle.items(), key=lambda kv: (-kv[1], kv[0]))[:8],
        copy_rate=copy_rate,
        answer_rate=answer_rate,
        lenses=list(summary.get("lenses", ["logit"])),
        temperatures=list(summary.get("temperatures") or []),
        layer_ece=layer_ece,
    )
    facts.tuned_temperature = layer_temperatures(summary)
    facts.tuned_accuracy = layer_accuracy(summary)
    facts.statistics = probe_statistics(facts)
    return facts


def layer_temperatures(summary: dict[str, Any]) -> list[tuple[int, float, float, float]]:
    """Per layer of the tuned lens: ECE at temperature 1, and the grid's temperature with the
    lowest ECE (ties to the one nearest 1) with that ECE; [] without a tuned lens."""
    table = (summary.get("tuned_calibration") or {}).get("bins")
    temperatures = summary.get("temperatures") or []
    if not table or 1.0 not in temperatures:
        return []
    found = []
    for layer, per_t in enumerate(table):
        errors = []
        for cells in per_t:
            n = sum(count for count, _, _ in cells)
            errors.append(sum(abs(hits - conf) for count, conf, hits in cells if count) / n if n else float("nan"))
        best = min(range(len(temperatures)), key=lambda j: (round(errors[j], 12), abs(math.log(temperatures[j]))))
        found.append((layer, errors[temperatures.index(1.0)], temperatures[best], errors[best]))
    return found


def layer_accuracy(summary: dict[str, Any]) -> list[float]:
    """Per layer of the tuned lens: the share of probes whose top-1 is the answer; [] without a tuned lens."""
    table = (summary.get("tuned_calibration") or {}).get("bins")
    if not table:
        return []
    found = []
    for per_t in table:
        cells = per_t[0]
        n = sum(count for count, _, _ in cells)
        found.append(sum(hits for _, _, hits in cells) / n if n else float("nan"))
    return found


def calibration_fit(temperatures: list[float], temperature: float, accuracy: float) -> str:
    """What the temperature with the lowest calibration error means: "fit" (inside the grid),
    "bound" (at an end of the grid: the best may lie beyond it) or "degenerate" (at an end of
    the grid with accuracy 0 or 1, where the error falls only because the temperature flattens
    every probability towards 0, or sharpens it towards 1: no calibration was found)."""
    if not temperatures or temperature not in (min(temperatures), max(temperatures)):
        return "fit"
    return "degenerate" if accuracy in (0.0, 1.0) else "bound"


def lens_calibration(records: pd.DataFrame, summary: dict[str, Any]) -> dict[str, list[float]]:
    """Per lens, per layer: ECE of the top-1 probability at each probe's last position."""
    last = {p["id"]: len(p["input_ids"]) - 1 for p in summary["probes"]}
    rows = records[records["position"] == records["probe"].map(last)]
    found = {}
    for lens, by_lens in rows.groupby("lens", sort=False):
        found[str(lens)] = [
            statistics.ece(group["top1_prob"].tolist(), (group["top1_token"] == group["answer_token"]).tolist())
            for _, group in by_lens.groupby("layer", sort=True)
        ]
    return found


def probe_statistics(facts: ModelFacts) -> dict[str, Any]:
    """The probe set's statistics (docs/experiments.md, 'Probe sets'): accuracy with Wilson intervals,
    overall and per relation; the relative depth where the answer first becomes top-1
    (median, IQR) per lens; forward against reverse on the facts stated both ways (paired
    accuracy difference with Newcombe's interval, mean difference of the whole answer's
    log-probability with a t interval); calibration of the final top-1 probability (ECE at
    temperature 1 and at the temperature that minimises it)."""
    probes = facts.probes
    n = len(probes)
    stats: dict[str, Any] = {
        "n": n,
        "accuracy": statistics.wilson(sum(p.correct for p in probes), n),
        "whole_answer_accuracy": statistics.wilson(sum(bool(p.answer_greedy) for p in probes), n),
        "multi_token_answers": sum(p.n_answer_tokens > 1 for p in probes),
        "depth": {
            "logit": statistics.spread([p.first_top1_layer / facts.n_layers for p in probes if p.first_top1_layer is not None]),
        },
    }
    if "tuned" in facts.lenses:
        stats["depth"]["tuned"] = statistics.spread(
            [p.tuned_first_top1_layer / facts.n_layers for p in probes if p.tuned_first_top1_layer is not None]
        )
    relations: dict[str, list[ProbeFacts]] = {}
    for p in probes:
        relations.setdefault(p.relation or "(no relation)", []).append(p)
    stats["relations"] = {
        name: {
            "n": len(group),
            "accuracy": statistics.wilson(sum(p.correct for p in group), len(group)),
            "depth": statistics.spread([p.first_top1_layer / facts.n_layers for p in group if p.first_top1_layer is not None]),
        }
        for name, group in relations.items()
    }
    pairs = reverse_pairs(facts)
    if pairs:
        stats["directions"] = {
            "pairs": len(pairs),
            "forward_accuracy": statistics.wilson(sum(f.correct for f, _ in pairs), len(pairs)),
            "reverse_accuracy": statistics.wilson(sum(r.correct for _, r in pairs), len(pairs)),
            "difference": statistics.paired_difference([f.correct for f, _ in pairs], [r.correct for _, r in pairs]),
            "logprob_difference": statistics.mean_interval(
                [f.answer_logprob - r.answer_logprob for f, r in pairs if f.answer_logprob is not None and r.answer_logprob is not None]
            ),
        }
    with_t = [p for p in probes if len(p.top1_prob_by_temperature) == len(facts.temperatures)]
    if with_t and facts.temperatures:
        correct = [p.correct for p in with_t]
        confidence = [p.final_top1_prob for p in with_t]
        temperature, best = statistics.best_temperature(facts.temperatures, [p.top1_prob_by_temperature for p in with_t], correct)
        stats["calibration"] = {
            "n": len(with_t),
            "ece": statistics.ece(confidence, correct),
            "temperature": temperature,
            "ece_at_temperature": best,
            "bins": statistics.reliability(confidence, correct),
        }
    return stats


def reverse_pairs(facts: ModelFacts) -> list[tuple[ProbeFacts, ProbeFacts]]:
    """(forward, reverse) probe pairs declared with ``reverse_of``."""
    pairs = []
    for probe in facts.probes:
        if probe.reverse_of:
            forward = facts.probe(probe.reverse_of)
            if forward is not None:
                pairs.append((forward, probe))
    return pairs


def relative(layer: int | None, n_layers: int) -> float | None:
    return None if layer is None else layer / n_layers


def answer_peak(probe: ProbeFacts) -> tuple[int, float]:
    """The layer where the logit lens gives the answer its highest probability at the last
    position (the earliest such layer), and that probability."""
    step = max(probe.trajectory, key=lambda s: (s["answer_prob"], -s["layer"]))
    return int(step["layer"]), float(step["answer_prob"])


def lowered_at_the_end(probe: ProbeFacts) -> bool:
    """Whether the last layers lower the answer: its probability peaks before the output
    layer and is lower at the output."""
    layer, prob = answer_peak(probe)
    return layer < probe.trajectory[-1]["layer"] and probe.final_answer_prob < prob


def displaced(probe: ProbeFacts) -> bool:
    """Whether the logit lens reads the answer as top-1 at some layer and the output does not keep it."""
    return probe.first_top1_layer is not None and probe.stable_top1_layer is None

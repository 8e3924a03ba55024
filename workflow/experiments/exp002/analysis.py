"""Figures computed from experiment 002's outputs, shared by its digests, offline analyst
and plots; beside them, what experiment 001's lens read on the same model.

Everything here is a deterministic function of ``results/002/output-{model}.json``, its
records CSV and (where a pair names its 001 probe) ``results/001/output-{model}.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workflow.evaluation.facts import ModelDescription
from workflow.experiments.exp002.records import read_patching_records

RESTORED = 0.5  # recovered at or above this counts as "restores the answer"


@dataclass
class Cell:
    layer: int
    position: int
    token: str
    recovered: float


@dataclass
class SweepFacts:
    """One (corruption, direction) sweep of one pair."""

    corruption: str
    direction: str
    # At the last position: the first layer from which patching it alone reaches RESTORED,
    # and recovered there at each layer.
    last_first_layer: int | None
    last_curve: list[float]
    # The largest recovered at a position other than the last, and where.
    peak_elsewhere: Cell | None
    # At the subject positions: the last layer where one of them still reaches RESTORED.
    subject_last_layer: int | None
    # The grid [layer][position] of recovered, for the pictures.
    grid: list[list[float]] = field(repr=False, default_factory=list)


@dataclass
class PairFacts:
    id: str
    clean_prompt: str
    corrupted_prompt: str
    clean_answer: str
    corrupted_answer: str
    tokens: list[str]  # the clean prompt's
    corrupted_tokens: list[str]
    subject_positions: list[int]
    logit_diff_clean: float
    logit_diff_corrupted: float
    logit_diff_noised: float | None
    sweeps: dict[str, SweepFacts]  # "prompt/denoise", "prompt/noise", "gaussian/denoise"
    probe: str | None  # experiment 001's probe with the clean prompt
    lens_first_top1_layer: int | None  # there, where 001's logit lens first reads the answer as top-1
    lens_stable_top1_layer: int | None
    lens_run: bool  # whether 001's outputs for the probe were there
    warnings: list[str]
    # There, where 001's tuned lens first reads the answer as top-1 (None: never, or no tuned lens).
    tuned_first_top1_layer: int | None = None
    tuned_run: bool = False  # whether 001 ran the tuned lens


@dataclass
class ModelFacts(ModelDescription):
    identity_max_prob_diff: float
    trace_noise_std: float
    trace_samples: int
    pairs: list[PairFacts]
    # Pairs made from the probe set that this model could not patch: (id, why).
    skipped: list[tuple[str, str]] = field(default_factory=list)


def relative(layer: int | None, n_layers: int) -> float | None:
    return None if layer is None else layer / n_layers


def _number(value: Any) -> float:
    return float(value) if value not in ("", None) else math.nan


def sweep_facts(rows: pd.DataFrame, corruption: str, direction: str, n_layers: int, n_tokens: int, subject: list[int]) -> SweepFacts:
    grid = [[math.nan] * n_tokens for _ in range(n_layers + 1)]
    tokens = [""] * n_tokens
    for layer, position, token, value in zip(rows["layer"], rows["position"], rows["token"], rows["recovered"]):
        grid[int(layer)][int(position)] = _number(value)
        tokens[int(position)] = token
    last = n_tokens - 1
    curve = [grid[layer][last] for layer in range(n_layers + 1)]
    first = next((layer for layer, value in enumerate(curve) if value >= RESTORED), None)
    others = [Cell(layer, p, tokens[p], grid[layer][p]) for layer in range(n_layers + 1) for p in range(last) if not math.isnan(grid[layer][p])]
    peak = max(others, key=lambda c: (c.recovered, -c.layer, -c.position)) if others else None
    subject_layers = [layer for layer in range(n_layers + 1) if any(grid[layer][p] >= RESTORED for p in subject if p != last)]
    return SweepFacts(corruption, direction, first, curve, peak, max(subject_layers) if subject_layers else None, grid)


def _lens_layers(lens_summary: str | None, probe: str | None) -> tuple[bool, int | None, int | None, dict[str, Any] | None]:
    """Whether 001's outputs hold ``probe``; where its logit lens first reads the answer as top-1
    and from where it stays; its tuned lens's record of the probe (None without one)."""
    if not lens_summary or not probe or not Path(lens_summary).is_file():
        return False, None, None, None
    summary = json.loads(Path(lens_summary).read_text(encoding="utf-8"))
    for p in summary.get("probes", []):
        if p["id"] == probe:
            return True, p.get("first_top1_layer"), p.get("stable_top1_layer"), p.get("tuned")
    return False, None, None, None


def model_facts(summary: str | Path, records: str | Path, lens_summary: str | Path | None = None) -> ModelFacts:
    document = json.loads(Path(summary).read_text(encoding="utf-8"))
    frame = read_patching_records(str(records), document)
    n_layers = int(document["n_layers"])
    pairs = []
    for p in document["pairs"]:
        n_tokens = len(p["clean_input_ids"])
        rows = frame[frame["pair"] == p["id"]]
        sweeps = {}
        for (corruption, direction), part in rows.groupby(["corruption", "direction"], sort=True):
            sweeps[f"{corruption}/{direction}"] = sweep_facts(part, corruption, direction, n_layers, n_tokens, p["subject_positions"])
        ran, first, stable, tuned = _lens_layers(str(lens_summary) if lens_summary else None, p.get("probe"))
        pairs.append(
            PairFacts(
                id=p["id"],
                clean_prompt=p["clean_prompt"],
                corrupted_prompt=p["corrupted_prompt"],
                clean_answer=p["clean_answer"],
                corrupted_answer=p["corrupted_answer"],
                tokens=p["clean_tokens"],
                corrupted_tokens=p["corrupted_tokens"],
                subject_positions=p["subject_positions"],
                logit_diff_clean=float(p["logit_diff_clean"]),
                logit_diff_corrupted=float(p["logit_diff_corrupted"]),
                logit_diff_noised=float(p["logit_diff_noised"]) if "logit_diff_noised" in p else None,
                sweeps=sweeps,
                probe=p.get("probe"),
                lens_first_top1_layer=first,
                lens_stable_top1_layer=stable,
                lens_run=ran,
                warnings=list(p.get("warnings", [])),
                tuned_first_top1_layer=(tuned or {}).get("first_top1_layer"),
                tuned_run=tuned is not None,
            )
        )
    return ModelFacts(
        **ModelDescription.read(document),
        identity_max_prob_diff=float(document["identity_check"]["max_abs_prob_diff"]),
        trace_noise_std=float(document["trace_noise_std"]),
        trace_samples=int(document["patching"]["trace"]["samples"]),
        pairs=pairs,
        skipped=[(p["id"], p["reason"]) for p in document.get("skipped_pairs", [])],
    )

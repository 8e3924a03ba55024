"""Pictures of experiment 002: per model and pair, the recovered fraction over layers x
positions for each sweep; across models, the last position's recovery by relative depth.

Data preparation (``patching_grid``, ``depth_curves``) is separate from drawing, so tests
can check what a picture shows against the records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from workflow.experiments.exp002.analysis import ModelFacts, PairFacts
from workflow.experiments.exp002.records import sweep_tokens
from workflow.report.plots import DEPTH_LABEL, layer_axis, legend_outside, plt, save, visible

SWEEP_ORDER = ("prompt/denoise", "prompt/noise", "gaussian/denoise")
SWEEP_TITLES = {"prompt/denoise": "denoise", "prompt/noise": "noise", "gaussian/denoise": "causal trace (restore)"}


@dataclass
class PatchingGrid:
    sweep: str
    value: np.ndarray  # [layer, position] recovered
    tokens: list[str]  # column labels: the patched run's tokens
    source_tokens: list[str]


def patching_grids(pair: PairFacts) -> list[PatchingGrid]:
    """One grid per sweep the pair has, in SWEEP_ORDER."""
    grids = []
    for key in SWEEP_ORDER:
        sweep = pair.sweeps.get(key)
        if sweep is None:
            continue
        reads, source = sweep_tokens(sweep.corruption, sweep.direction, pair.tokens, pair.corrupted_tokens)
        grids.append(PatchingGrid(key, np.array(sweep.grid, dtype=float), list(reads), list(source)))
    return grids


def _label(read: str, source: str) -> str:
    return visible(read) if read == source else f"{visible(read)}←{visible(source)}"


def pair_figure(model: str, pair: PairFacts):
    grids = patching_grids(pair)
    n_layers, n_pos = grids[0].value.shape
    fig, axes = plt.subplots(1, len(grids), figsize=(max(3.0, 0.45 * n_pos + 1.4) * len(grids) + 1.4, max(4.0, 0.2 * n_layers + 2.4)),
                             squeeze=False, constrained_layout=True)
    image = None
    for ax, grid in zip(axes[0], grids):
        image = ax.imshow(grid.value, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        ax.set_xticks(range(n_pos), [_label(r, s) for r, s in zip(grid.tokens, grid.source_tokens)], rotation=45, ha="right", fontsize=8)
        layer_axis(ax, "y", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(SWEEP_TITLES[grid.sweep], fontsize=9)
        ax.set_xlabel("position (token; patched ← source)")
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    fig.suptitle(f"{model} · {pair.id}\nrecovered fraction of the logit difference {pair.clean_answer!r} − {pair.corrupted_answer!r}", fontsize=10)
    fig.colorbar(image, ax=list(axes[0]), label="recovered (1 = the patch alone does it)")
    return fig


def plot_pair(model: str, pair: PairFacts, path: str | os.PathLike[str]) -> None:
    save(pair_figure(model, pair), path)


def depth_curves(facts: list[ModelFacts], sweep: str = "prompt/denoise") -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Per pair, per model: (relative depths, recovered at the last position)."""
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for m in facts:
        for p in m.pairs:
            s = p.sweeps.get(sweep)
            if s is None:
                continue
            depths = [layer / m.n_layers for layer in range(m.n_layers + 1)]
            curves.setdefault(p.id, {})[m.model] = (depths, list(s.last_curve))
    return curves


def depth_figure(facts: list[ModelFacts]):
    """One row of panels per pair, one column per sweep, one line per model: four panels wide
    at most however many pairs there are, so its text stays legible at a page's width."""
    sweeps = [s for s in SWEEP_ORDER if any(s in p.sweeps for m in facts for p in m.pairs)]
    pairs = sorted({p.id for m in facts for p in m.pairs})
    fig, axes = plt.subplots(len(pairs), len(sweeps), figsize=(3.4 * len(sweeps) + 1.2, 2.2 * len(pairs) + 1.2),
                             squeeze=False, sharey=True, sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, sweep in enumerate(sweeps):
        curves = depth_curves(facts, sweep)
        for row, pair in enumerate(pairs):
            ax = axes[row][col]
            for i, m in enumerate(facts):
                if m.model in curves.get(pair, {}):
                    x, y = curves[pair][m.model]
                    ax.plot(x, y, color=colours[i % len(colours)], label=m.model, linewidth=1.2)
                    lens = next((p for p in m.pairs if p.id == pair and p.lens_run and p.lens_first_top1_layer is not None), None)
                    if lens is not None:
                        ax.axvline(lens.lens_first_top1_layer / m.n_layers, color=colours[i % len(colours)], linestyle=":", linewidth=1)
            ax.axhline(0.0, color="grey", linewidth=0.5)
            ax.set_ylim(-0.25, 1.1)
            ax.set_title(f"{pair} · {SWEEP_TITLES[sweep]}", fontsize=9)
            if col == 0:
                ax.set_ylabel("recovered", fontsize=9)
            if row == len(pairs) - 1:
                ax.set_xlabel(DEPTH_LABEL, fontsize=9)
            ax.tick_params(labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    legend_outside(fig, handles, labels, fontsize=9)
    fig.suptitle("Patching the last position alone, by relative depth\n(dotted: where experiment 001's lens first reads the answer)",
                 x=0.02, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    return fig


def plot_depth(facts: list[ModelFacts], path: str | os.PathLike[str]) -> None:
    save(depth_figure(facts), path)



def plot_pairs(model: str, pairs: dict, summary_path: str, pair_ids: list[str], paths: list[str], draw) -> None:
    """One figure per pair id (002's or 004's), ``draw(model, pair, path)``; a pair the model
    could not patch (the JSON's ``skipped_pairs``) gets a figure saying why."""
    import json

    with open(summary_path, encoding="utf-8") as fh:
        skipped = {s["id"]: s["reason"] for s in json.load(fh).get("skipped_pairs", [])}
    for pair, path in zip(pair_ids, paths):
        if pair in skipped:
            plot_skipped(model, pair, skipped[pair], path)
        else:
            draw(model, pairs[pair], path)


def plot_skipped(model: str, pair_id: str, reason: str, path: str | os.PathLike[str]) -> None:
    """The figure of a pair made from the probe set that this model could not patch: why."""
    import textwrap

    fig, ax = plt.subplots(figsize=(8, 2.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{model}, pair {pair_id}: not patched\n\n" + textwrap.fill(reason, 100), ha="center", va="center", fontsize=8)
    save(fig, path)

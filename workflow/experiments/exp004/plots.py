"""Pictures of experiment 004: per model and pair, component x layer heatmaps (direct logit
attribution of attention, MLP and each head; exact patching's recovered fraction per
position; attribution patching against exact patching); across models, what attention and
MLPs write by relative depth and how attribution patching agrees with exact patching.

The panels draw the arrays of ``workflow.experiments.exp004.analysis.PairFacts`` as they are, so tests
can check a picture's data against the records.
"""

from __future__ import annotations

import os

import numpy as np

from workflow.experiments.exp004.analysis import KINDS, ModelFacts, PairFacts
from workflow.report.plots import DEPTH_LABEL, layer_axis, legend_outside, plt, save, visible


def _symmetric(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(max(np.abs(finite).max(), 1e-9)) if finite.size else 1.0


def heads_max(grid: np.ndarray) -> np.ndarray:
    """[H, L, T] -> [H, L]: at each head and block, the recovered fraction of the position
    where its magnitude is largest (signed)."""
    filled = np.where(np.isfinite(grid), grid, 0.0)
    index = np.abs(filled).argmax(axis=2)
    return np.take_along_axis(filled, index[..., None], axis=2)[..., 0]


def pair_figure(model: str, pair: PairFacts):
    n_layers = pair.dla_blocks.shape[1]
    n_heads = pair.dla_heads.shape[0]
    tokens = [visible(t) for t in pair.tokens]
    fig, axes = plt.subplots(2, 3, figsize=(15.0, 7.6), constrained_layout=True)
    answer, competitor = pair.answer.token, pair.competitor.token

    def heat(ax, values, title, ylabels=None, cbar="", vmax=None):
        """Columns are blocks (this experiment's records count blocks, not 001's layers)."""
        vmax = vmax or _symmetric(values)
        image = ax.imshow(values, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        layer_axis(ax, "x", "block", every=n_layers <= 20, fontsize=8)  # every block where they fit
        ax.tick_params(axis="x", labelsize=7)
        if ylabels is not None:
            ax.set_yticks(range(len(ylabels)), ylabels, fontsize=7)
        fig.colorbar(image, ax=ax, label=cbar, shrink=0.85)
        return image

    heat(axes[0][0], pair.dla_blocks, f"direct logit attribution: {visible(answer)} − {visible(competitor)}",
         list(KINDS), cbar="logit")
    if n_heads:
        heat(axes[0][1], pair.dla_heads, "direct logit attribution per head", [str(h) for h in range(n_heads)], cbar="logit")
        axes[0][1].set_ylabel("head", fontsize=8)
    else:
        axes[0][1].axis("off")
        axes[0][1].text(0.5, 0.5, "heads not exposed:\nattention per block only", ha="center", va="center", fontsize=9)
    scatter = axes[0][2]
    if pair.exact_blocks is not None:
        for kind_index, kind in enumerate(KINDS):
            scatter.scatter(pair.exact_blocks[kind_index].ravel(), pair.atp_blocks[kind_index].ravel(), s=10, label=kind, alpha=0.8)
        if n_heads:
            scatter.scatter(pair.exact_heads.ravel(), pair.atp_heads.ravel(), s=6, label="heads", alpha=0.5)
        values = np.concatenate([pair.exact_blocks.ravel(), pair.atp_blocks.ravel()])
        limit = _symmetric(values) * 1.05
        scatter.plot([-limit, limit], [-limit, limit], color="grey", linewidth=0.6)
        spearman = pair.agreement["spearman"] if pair.agreement else float("nan")
        scatter.set_title(f"attribution patching against exact (Spearman {spearman:.2f})", fontsize=9)
        scatter.set_xlabel("exact recovered", fontsize=8)
        scatter.set_ylabel("AtP estimate", fontsize=8)
        legend_outside(scatter, fontsize=7)
        scatter.tick_params(labelsize=7)
    else:
        scatter.axis("off")
        scatter.text(0.5, 0.5, "exact patching off\n(components.exact: false)", ha="center", va="center", fontsize=9)
    shown = pair.exact_blocks if pair.exact_blocks is not None else pair.atp_blocks
    shown_heads = pair.exact_heads if pair.exact_heads is not None else pair.atp_heads
    how = "exact patching" if pair.exact_blocks is not None else "AtP estimate"
    vmax = max(_symmetric(shown), 1.0)
    for kind_index, kind in enumerate(KINDS):
        ax = axes[1][kind_index]
        heat(ax, shown[kind_index].T, f"{how}: {kind} output, recovered", tokens, cbar="recovered", vmax=vmax)
        ax.set_ylabel("position (clean token)", fontsize=8)
    if n_heads:
        heat(axes[1][2], heads_max(shown_heads), f"{how}: heads, recovered at their strongest position",
             [str(h) for h in range(n_heads)], cbar="recovered", vmax=vmax)
        axes[1][2].set_ylabel("head", fontsize=8)
    else:
        axes[1][2].axis("off")
    fig.suptitle(f"{model} · {pair.id}: {pair.clean_prompt!r} → {visible(answer)} (corrupted: {pair.corrupted_prompt!r})",
                 fontsize=10)
    return fig


def plot_pair(model: str, pair: PairFacts, path: str | os.PathLike[str]) -> None:
    save(pair_figure(model, pair), path)


def depth_profile(m: ModelFacts, kind: str) -> tuple[list[float], list[float]]:
    """(relative depths, the attention's or MLP's direct share of answer minus competitor,
    averaged over pairs) by block."""
    index = KINDS.index(kind)
    values = np.mean([p.dla_blocks[index] for p in m.pairs], axis=0)
    return [(b + 1) / m.n_layers for b in range(m.n_layers)], [float(v) for v in values]


def cross_figure(facts: list[ModelFacts]):
    fig, axes = plt.subplots(1, 3, figsize=(15.0, 4.2), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, kind in enumerate(KINDS):
        ax = axes[col]
        for i, m in enumerate(facts):
            x, y = depth_profile(m, kind)
            ax.plot(x, y, marker="o", markersize=3, linewidth=1.2, color=colours[i % len(colours)], label=m.model)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(f"{kind}: direct share of answer − competitor (mean over pairs)", fontsize=9)
        ax.set_xlabel(f"{DEPTH_LABEL}: block n at (n + 1) / blocks", fontsize=8)
        ax.set_ylabel("logit", fontsize=8)
        ax.tick_params(labelsize=7)
    ax = axes[2]
    pairs = sorted({p.id for m in facts for p in m.pairs})
    width = 0.8 / max(len(facts), 1)
    for i, m in enumerate(facts):
        by_id = {p.id: p.agreement["spearman"] if p.agreement else np.nan for p in m.pairs}
        ax.bar(np.arange(len(pairs)) + i * width, [by_id.get(p, np.nan) for p in pairs], width, label=m.model,
               color=colours[i % len(colours)])
    ax.set_xticks(np.arange(len(pairs)) + width * (len(facts) - 1) / 2, pairs, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.set_title("attribution patching against exact: Spearman per pair", fontsize=9)
    ax.tick_params(labelsize=7)
    legend_outside(ax, fontsize=7)  # one legend for the three panels: the same colours
    return fig


def plot_cross(facts: list[ModelFacts], path: str | os.PathLike[str]) -> None:
    save(cross_figure(facts), path)


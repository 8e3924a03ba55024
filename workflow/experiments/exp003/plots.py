"""Pictures of experiment 003: per model and probe, the logit lens's probability of each
generated token at every layer (generated tokens as columns); across models, the median
settling depth by word class.

Data preparation (``ProbeFacts.grid``, ``class_depths``) is separate from drawing, so tests
can check what a picture shows against the records.
"""

from __future__ import annotations

import os

import numpy as np

from workflow.experiments.exp003.analysis import ModelFacts, ProbeFacts
from workflow.report.plots import DEPTH_LABEL, layer_axis, legend_outside, outline_cells, plt, save, visible

CLASS_ORDER = ("content", "function", "continuation", "other")


def probe_figure(model: str, n_layers: int, probe: ProbeFacts):
    grid = np.array(probe.grid, dtype=float)
    n_tokens = grid.shape[1]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * n_tokens + 2.0), max(4.0, 0.2 * n_layers + 2.4)), constrained_layout=True)
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0)
    outline_cells(ax, probe.top1)
    settled = [t.stable["logit"] for t in probe.tokens]
    ax.scatter(range(n_tokens), settled, marker="_", s=120, color="black", label="settles (stays top-1 from here)")
    ax.plot([], [], "s", markerfacecolor="none", markeredgecolor="red", label="outlined: the token is the top-1")
    ax.set_xticks(range(n_tokens), [visible(t.token) for t in probe.tokens], rotation=45, ha="right", fontsize=8)
    layer_axis(ax, "y")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("generated token (in order)")
    ax.set_title(f"{model} · {probe.id}\n{probe.prompt!r} → generated, logit lens", fontsize=9)
    fig.colorbar(image, ax=ax, label="lens probability of the generated token")
    legend_outside(fig, *ax.get_legend_handles_labels(), fontsize=7)
    return fig


def plot_probe(model: str, n_layers: int, probe: ProbeFacts, path: str | os.PathLike[str]) -> None:
    save(probe_figure(model, n_layers, probe), path)


def class_depths(facts: list[ModelFacts], lens: str = "logit") -> dict[str, list[float | None]]:
    """Per model, the median settling depth of each of CLASS_ORDER (None: no such token)."""
    return {m.model: [m.by_class[lens][c].median_stable if m.by_class[lens][c].count else None for c in CLASS_ORDER] for m in facts}


def settling_figure(facts: list[ModelFacts]):
    depths = class_depths(facts)
    fig, ax = plt.subplots(figsize=(9.0, 3.6), constrained_layout=True)
    width = 0.8 / max(1, len(depths))
    for i, (model, values) in enumerate(depths.items()):
        xs = [k + i * width for k, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width=width, label=model)
    counts = {m.model: [m.by_class["logit"][c].count for c in CLASS_ORDER] for m in facts}
    labels = [f"{c}\n(" + ", ".join(str(counts[m][k]) for m in counts) + " tokens)" for k, c in enumerate(CLASS_ORDER)]
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(CLASS_ORDER))], labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("median settling depth\n" + DEPTH_LABEL.removeprefix("relative depth "))
    legend_outside(ax, fontsize=8)
    ax.set_title("Where generated tokens settle under the logit lens, by word class", fontsize=9)
    return fig


def plot_settling(facts: list[ModelFacts], path: str | os.PathLike[str]) -> None:
    save(settling_figure(facts), path)

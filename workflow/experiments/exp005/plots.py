"""Pictures of experiment 005: per model and task, one panel per lens with the mean
probability over concepts (and its bootstrap interval) of the target word, the English word,
the source word and the concept at every layer; across models, the target word against the
English word by relative depth, for each lens.

The curves come from ``analysis`` (``LensReading.curves``), so tests can check what a
picture shows against the records.
"""

from __future__ import annotations

import os

from workflow.experiments.exp005.analysis import READABLE, ModelFacts, TaskFacts
from workflow.report.plots import DEPTH_LABEL, layer_axis, legend_outside, plt, save

COLOURS = {"target": "tab:blue", "english": "tab:red", "source": "tab:green", "concept": "black"}
LABELS = {"target": "target word", "english": "English word", "source": "source word", "concept": "concept (any of its words)"}


def task_figure(facts: ModelFacts, task: TaskFacts):
    lenses = list(task.readings)
    fig, axes = plt.subplots(1, len(lenses), figsize=(4.2 * len(lenses), 3.6), constrained_layout=True, sharey=True, squeeze=False)
    for ax, lens in zip(axes[0], lenses):
        reading = task.readings[lens]
        for measure, curve in reading.curves.items():
            style = "--" if measure == "concept" else "-"
            ax.plot(curve.layers, curve.mean, style, color=COLOURS[measure], label=LABELS[measure], linewidth=1.2)
            ax.fill_between(curve.layers, curve.low, curve.high, color=COLOURS[measure], alpha=0.15, linewidth=0)
        ax.axhline(READABLE, color="grey", linewidth=0.6, linestyle=":")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, facts.n_layers)
        layer_axis(ax, "x")
        ax.set_title(f"{lens} lens", fontsize=9)
    axes[0][0].set_ylabel("mean probability over concepts\n(95% bootstrap interval)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="grey", linewidth=0.6, linestyle=":"))
    labels.append(f"readable: interval above {READABLE:g}")
    legend_outside(fig, handles, labels, fontsize=7)
    fig.suptitle(f"{facts.model} · {task.id}: {task.words['scored']} concepts ({facts.scoring} token of each word)", fontsize=9)
    return fig


def plot_task(facts: ModelFacts, task: TaskFacts, path: str | os.PathLike[str]) -> None:
    save(task_figure(facts, task), path)


def cross_figure(models: list[ModelFacts]):
    lenses = [lens for lens in ("logit", "tuned", "patchscope") if any(lens in m.lenses for m in models)]
    fig, axes = plt.subplots(1, len(lenses), figsize=(4.2 * len(lenses), 3.6), constrained_layout=True, sharey=True, squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, lens in zip(axes[0], lenses):
        for i, m in enumerate(models):
            translations = [t for t in m.tasks if t.translation and lens in t.readings]
            for task in translations:
                for role in ("target", "english"):
                    curve = task.readings[lens].curves[role]
                    ax.plot([layer / m.n_layers for layer in curve.layers], curve.mean, styles[i % len(styles)],
                            color=COLOURS[role], linewidth=1.0, alpha=0.8,
                            label=f"{m.model}: {LABELS[role]}" if task is translations[0] else None)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, 1)
        ax.set_xlabel(DEPTH_LABEL, fontsize=8)
        ax.set_title(f"{lens} lens, translation tasks", fontsize=9)
    axes[0][0].set_ylabel("mean probability over concepts")
    legend_outside(fig, *axes[0][0].get_legend_handles_labels(), fontsize=7)
    fig.suptitle("Target word against English word, every translation task, by relative depth", fontsize=9)
    return fig


def plot_cross(models: list[ModelFacts], path: str | os.PathLike[str]) -> None:
    save(cross_figure(models), path)

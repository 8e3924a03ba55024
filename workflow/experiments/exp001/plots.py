"""Pictures of experiment 001: the logit-lens heatmap and cross-model trajectories.

Data preparation (``heatmap_data``, ``trajectories``) is separate from drawing, so
tests can check what a picture shows against the records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workflow.experiments.exp001.analysis import ModelFacts, reverse_pairs
from workflow.experiments.exp001.digest import DETAIL_PROBES
from workflow.report.plots import KL_LINEAR_BELOW, plt, save, visible

@dataclass
class HeatmapData:
    model: str
    probe: str
    layers: list[int]  # rows, 0..L
    input_tokens: list[str]  # column labels, one per recorded position
    top1: list[list[str]]  # [layer][position] top-1 token
    value: np.ndarray  # [layer, position] top-1 probability (or entropy)
    value_name: str
    lens: str = "logit"


def heatmap_data(records: pd.DataFrame, model: str, probe: str, value: str = "top1_prob", lens: str = "logit") -> HeatmapData:
    """The layers x positions grid of one probe's records through ``lens``."""
    rows = records[(records["probe"] == probe) & (records["lens"] == lens)]
    if rows.empty:
        raise ValueError(f"no {lens}-lens records for probe {probe!r}")
    layers = sorted(rows["layer"].unique().tolist())
    positions = sorted(rows["position"].unique().tolist())
    grid = rows.set_index(["layer", "position"])
    top1 = [[grid.loc[(layer, pos), "top1_token"] for pos in positions] for layer in layers]
    values = np.array([[float(grid.loc[(layer, pos), value]) for pos in positions] for layer in layers])
    inputs = [grid.loc[(layers[0], pos), "input_token"] for pos in positions]
    return HeatmapData(model, probe, layers, inputs, top1, values, value, lens)


def plot_heatmap(data: HeatmapData, path: str | os.PathLike[str]) -> None:
    """``heatmap_figure`` saved to ``path``."""
    save(heatmap_figure(data), path)


def heatmap_figure(data: HeatmapData):
    """Rows = layers (0 at the bottom), columns = input positions, cell text = top-1 token."""
    n_layers, n_pos = data.value.shape
    fig, ax = plt.subplots(figsize=(max(7.5, 0.85 * n_pos + 2.5), max(4.0, 0.32 * n_layers + 1.8)))
    vmax = 1.0 if data.value_name == "top1_prob" else float(data.value.max() or 1.0)
    image = ax.imshow(data.value, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=vmax)
    for i in range(n_layers):
        for j in range(n_pos):
            shade = data.value[i, j] / vmax
            ax.text(j, i, visible(data.top1[i][j]), ha="center", va="center", fontsize=7,
                    color="black" if shade > 0.55 else "white")
    ax.set_xticks(range(n_pos), [visible(t) for t in data.input_tokens], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_layers), [str(layer) for layer in data.layers], fontsize=7)
    ax.set_xlabel("input position (token)")
    ax.set_ylabel("layer (0 = embedding)")
    # Two lines, so the title fits over a prompt of a few tokens too.
    ax.set_title(f"{data.model} · {data.probe} · {data.lens} lens\ntop-1 token per layer and position", fontsize=10)
    fig.colorbar(image, ax=ax, label="top-1 probability" if data.value_name == "top1_prob" else data.value_name)
    fig.tight_layout()
    return fig


TRAJECTORY_METRICS = (
    ("answer_prob", "answer probability", None),
    ("answer_rank", "answer rank", "log"),
    ("entropy", "entropy (nats)", None),
    ("kl_to_final", "KL to final (nats)", "symlog"),
)
# KL is 0 at the last layer and hundreds of nats at the embedding: linear below this, log above.


def trajectories(facts: list[ModelFacts], metric: str) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """probe -> model -> (relative depths, metric values) at the last position."""
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for f in facts:
        for p in f.probes[:DETAIL_PROBES]:  # one row per probe: the first few of a large set
            depth = [step["layer"] / f.n_layers for step in p.trajectory]
            out.setdefault(p.id, {})[f.model] = (depth, [float(step[metric]) for step in p.trajectory])
    return out


def plot_trajectories(facts: list[ModelFacts], path: str | os.PathLike[str]) -> None:
    save(trajectory_figure(facts), path)


def trajectory_figure(facts: list[ModelFacts]):
    """One row of panels per probe, one column per metric, one line per model.

    Probes are rows so that the figure's width stays that of four panels however many
    probes there are: shown at a report's or a page's width, its text stays legible.
    """
    probes = list(trajectories(facts, "answer_prob"))
    columns = len(TRAJECTORY_METRICS)
    fig, axes = plt.subplots(len(probes), columns, figsize=(3.1 * columns + 1.2, 2.3 * len(probes) + 1.1),
                             squeeze=False, sharex=True)
    for col, (metric, label, scale) in enumerate(TRAJECTORY_METRICS):
        data = trajectories(facts, metric)
        for row, probe in enumerate(probes):
            ax = axes[row][col]
            for model, (x, y) in data[probe].items():
                ax.plot(x, y, marker=".", linewidth=1.2, label=model)
            if scale == "symlog":
                ax.set_yscale("symlog", linthresh=KL_LINEAR_BELOW)
                ax.set_ylim(bottom=0)
            elif scale:
                ax.set_yscale("log")
            if metric == "answer_prob":
                ax.set_ylim(-0.02, 1.02)  # the same scale in every panel, so probes compare
            ax.set_title(f"{probe} · {label}", fontsize=9)
            if row == len(probes) - 1:
                ax.set_xlabel("relative depth", fontsize=9)
            ax.tick_params(labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=9, ncol=len(labels))
    fig.suptitle("Last position, by relative depth (layer / number of layers)", x=0.02, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return fig


def statistics_data(facts: ModelFacts) -> dict:
    """What the statistics figure shows, from ``facts.statistics``: per relation the accuracy
    with its interval and the first-top-1 depths; per fact pair the whole answer's
    log-probability forward and reverse; the reliability bins."""
    n_layers = facts.n_layers
    relations = {}
    for p in facts.probes:
        relations.setdefault(p.relation or "(no relation)", []).append(p)
    return {
        "relations": [
            (name, facts.statistics["relations"][name]["accuracy"],
             [p.first_top1_layer / n_layers for p in group if p.first_top1_layer is not None])
            for name, group in relations.items()
        ],
        "pairs": [(f.answer_logprob, r.answer_logprob, f.correct, r.correct) for f, r in reverse_pairs(facts)
                  if f.answer_logprob is not None and r.answer_logprob is not None],
        "bins": (facts.statistics.get("calibration") or {}).get("bins", []),
    }


def statistics_figure(facts: ModelFacts):
    """Five panels: accuracy per relation (95% Wilson intervals), first-top-1 depth per
    relation, forward against reverse per fact pair, the reliability diagram, and each lens's
    calibration error by layer (the tuned lens's also at its best temperature per layer)."""
    # Kept as one function: the five panels of one figure, drawn in order on shared axes.
    data = statistics_data(facts)
    # Two rows (three panels, then two): shown at a page's width, the text stays legible.
    fig, grid = plt.subplots(2, 3, figsize=(14, 8.6))
    fig.delaxes(grid[1][2])
    axes = [*grid[0], *grid[1][:2]]
    # Probes without a relation (the default set) are "all probes" alone, "other probes" beside relations.
    unnamed = "all probes" if len(data["relations"]) == 1 else "other probes"
    names = [unnamed if name == "(no relation)" else name if len(name) <= 28 else name[:27] + "…" for name, _, _ in data["relations"]]
    ys = np.arange(len(names))
    acc, depth_ax, pair_ax, rel_ax, layer_ax = axes
    estimates = [a.estimate for _, a, _ in data["relations"]]
    errors = [[max(0.0, a.estimate - a.low) for _, a, _ in data["relations"]], [max(0.0, a.high - a.estimate) for _, a, _ in data["relations"]]]
    acc.barh(ys, estimates, xerr=errors, color="#4c72b0", capsize=3)
    acc.set_yticks(ys, names, fontsize=7)
    acc.set_xlim(0, 1)
    acc.set_xlabel("accuracy (final top-1 = answer), 95% CI")
    acc.invert_yaxis()
    acc.set_title("accuracy" + (" per relation" if len(names) > 1 else ""), fontsize=9)
    depths = [d if d else [np.nan] for _, _, d in data["relations"]]
    depth_ax.boxplot(depths, orientation="horizontal", positions=ys, widths=0.6)
    depth_ax.set_yticks(ys, names, fontsize=7)
    depth_ax.set_xlim(0, 1.02)
    depth_ax.set_xlabel("relative depth of first top-1 (logit lens)")
    depth_ax.invert_yaxis()
    depth_ax.set_title("where the answer first becomes top-1" + (" per relation" if len(names) > 1 else ""), fontsize=9)
    if data["pairs"]:
        colours = {(True, True): "#2ca02c", (True, False): "#1f77b4", (False, True): "#ff7f0e", (False, False): "#7f7f7f"}
        labels = {(True, True): "both right", (True, False): "forward only", (False, True): "reverse only", (False, False): "neither"}
        for key, colour in colours.items():
            pts = [(f, r) for f, r, fc, rc in data["pairs"] if (fc, rc) == key]
            if pts:
                pair_ax.scatter([f for f, _ in pts], [r for _, r in pts], s=12, color=colour, label=f"{labels[key]} ({len(pts)})")
        low = min(min(f, r) for f, r, _, _ in data["pairs"])
        pair_ax.plot([low, 0], [low, 0], color="black", linewidth=0.8)
        pair_ax.legend(fontsize=7)
    else:
        pair_ax.text(0.5, 0.5, "no probe states a fact\nin both directions", ha="center", va="center", transform=pair_ax.transAxes)
    pair_ax.set_title("each fact forward and reverse", fontsize=9)
    pair_ax.set_xlabel("forward: log-probability of the whole answer")
    pair_ax.set_ylabel("reverse: log-probability of the whole answer")
    bins = data["bins"]
    rel_ax.plot([0, 1], [0, 1], color="black", linewidth=0.8)
    if bins:
        rel_ax.bar([(b.low + b.high) / 2 for b in bins], [b.accuracy for b in bins], width=0.1, edgecolor="black", color="#4c72b0", alpha=0.7)
        rel_ax.plot([b.confidence for b in bins], [b.accuracy for b in bins], "o", color="#c44e52", markersize=4)
        for b in bins:
            rel_ax.annotate(str(b.count), ((b.low + b.high) / 2, min(b.accuracy + 0.03, 0.97)), ha="center", fontsize=6)
    rel_ax.set_xlim(0, 1)
    rel_ax.set_ylim(0, 1)
    rel_ax.set_title("reliability of the final top-1 probability", fontsize=9)
    rel_ax.set_xlabel("final top-1 probability (bins; dots: mean)")
    rel_ax.set_ylabel("accuracy in bin (n above)")
    for lens, values in facts.layer_ece.items():
        layer_ax.plot(range(len(values)), values, marker=".", linewidth=1, label=f"{lens} lens, T = 1")
    if facts.tuned_temperature:
        layer_ax.plot([r[0] for r in facts.tuned_temperature], [r[3] for r in facts.tuned_temperature], marker=".",
                      linewidth=1, linestyle="--", label="tuned lens, best T per layer")
    layer_ax.set_ylim(0, 1)
    layer_ax.set_title("calibration error by layer, per lens", fontsize=9)
    layer_ax.set_xlabel("layer")
    layer_ax.set_ylabel("calibration error (ECE) of the top-1 probability")
    layer_ax.legend(fontsize=7)
    st = facts.statistics
    fig.suptitle(f"{facts.model}: {st['n']} probes, accuracy {st['accuracy'].text(percent=True)}"
                 + (f"; ECE {st['calibration']['ece']:.3f}" if st.get("calibration") else ""), fontsize=10)
    fig.tight_layout()
    return fig


def plot_statistics(facts: ModelFacts, path: str | os.PathLike[str]) -> None:
    save(statistics_figure(facts), path)

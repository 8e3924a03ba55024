"""Pictures of experiment 001: the heatmap of each probe through each lens, the
probe-set statistics, and across models the answer by layer and the trajectories.

Data preparation (``heatmap_data``, ``answer_by_layer``, ``trajectories``,
``statistics_data``) is separate from drawing, so tests can check what a picture shows
against the records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from workflow.experiments.exp001.analysis import ModelFacts, calibration_fit, reverse_pairs
from workflow.experiments.exp001.digest import DETAIL_PROBES
from workflow.report.plots import (
    DEPTH_LABEL,
    KL_LINEAR_BELOW,
    MIN_PANEL_PROBES,
    layer_axis,
    legend_outside,
    outline_cells,
    plt,
    save,
    too_few,
    visible,
)


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
    answer: str = ""  # the probe's answer token (the first, the one the records follow)
    is_answer: list[list[bool]] | None = None  # [layer][position]: the top-1 is the answer


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
    answers = [[grid.loc[(layer, pos), "answer_token"] for pos in positions] for layer in layers]
    is_answer = [[t == a for t, a in zip(tops, wanted)] for tops, wanted in zip(top1, answers)]
    return HeatmapData(model, probe, layers, inputs, top1, values, value, lens, answers[0][-1], is_answer)


def plot_heatmap(data: HeatmapData, path: str | os.PathLike[str]) -> None:
    """``heatmap_figure`` saved to ``path``."""
    save(heatmap_figure(data), path)


def heatmap_figure(data: HeatmapData):
    """Rows = layers (0 at the bottom), columns = input positions, cell text = top-1 token;
    the cells whose top-1 is the answer outlined."""
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
    layer_axis(ax, "y", every=True, fontsize=9)
    ax.set_yticks(range(n_layers), [str(layer) for layer in data.layers], fontsize=7)
    ax.set_xlabel("input position (token)")
    marked = outline_cells(ax, data.is_answer or [])
    answer = (f"outlined (red): top-1 is the answer {visible(data.answer)}" if marked
              else f"the answer {visible(data.answer)} is top-1 in no cell")
    # Three lines, so the title fits over a prompt of a few tokens too.
    ax.set_title(f"{data.model} · {data.probe} · {data.lens} lens\ntop-1 token per layer and position\n{answer}", fontsize=10)
    fig.colorbar(image, ax=ax, label="top-1 probability" if data.value_name == "top1_prob" else data.value_name)
    fig.tight_layout()
    return fig


@dataclass
class AnswerCurve:
    """The answer's probability and rank at each layer, at the probe's last prompt position."""

    layers: list[int]
    prob: list[float]
    rank: list[int]


@dataclass
class AnswerByLayer:
    """One model's answer curves: probe id -> lens -> AnswerCurve, the first DETAIL_PROBES probes."""

    model: str
    n_layers: int
    lenses: list[str]
    answers: dict[str, str]  # probe id -> its answer token
    curves: dict[str, dict[str, AnswerCurve]]


def answer_by_layer(summary: dict, records: pd.DataFrame) -> AnswerByLayer:
    """From one model's JSON summary and records: the answer's probability and rank at every
    layer through every lens the run recorded, at each probe's last prompt position."""
    last = {p["id"]: len(p["input_ids"]) - 1 for p in summary["probes"]}
    probes = [p["id"] for p in summary["probes"]][:DETAIL_PROBES]
    rows = records[records["probe"].isin(probes) & (records["position"] == records["probe"].map(last))]
    curves: dict[str, dict[str, AnswerCurve]] = {probe: {} for probe in probes}
    lenses = [lens for lens in summary.get("lenses", ["logit"]) if (rows["lens"] == lens).any()]
    for (probe, lens), group in rows.groupby(["probe", "lens"], sort=False):
        group = group.sort_values("layer")
        curves[probe][lens] = AnswerCurve([int(v) for v in group["layer"]], [float(v) for v in group["answer_prob"]],
                                          [int(v) for v in group["answer_rank"]])
    answers = {p["id"]: p["answer_token"] for p in summary["probes"] if p["id"] in curves}
    return AnswerByLayer(summary["model"], int(summary["n_layers"]), lenses, answers, curves)


LENS_STYLE = {"logit": ("#1f77b4", "-"), "tuned": ("#ff7f0e", "--")}


def answer_by_layer_figure(models: list[AnswerByLayer]):
    """One column per model, one row per probe: the answer's probability at the last prompt
    position by layer, one line per lens, a dot where the answer is the lens's top-1."""
    probes = list(dict.fromkeys(p for m in models for p in m.curves))
    lenses = list(dict.fromkeys(lens for m in models for lens in m.lenses))
    fig, axes = plt.subplots(len(probes), len(models), figsize=(4.6 * len(models) + 0.8, 1.75 * len(probes) + 1.5),
                             squeeze=False, sharex="col", sharey=True)
    for col, m in enumerate(models):
        for row, probe in enumerate(probes):
            ax = axes[row][col]
            for lens in lenses:
                curve = m.curves.get(probe, {}).get(lens)
                if curve is None:
                    continue
                colour, style = LENS_STYLE.get(lens, ("#2ca02c", ":"))
                ax.plot(curve.layers, curve.prob, color=colour, linestyle=style, linewidth=1.3)
                top = [(x, y) for x, y, r in zip(curve.layers, curve.prob, curve.rank) if r == 1]
                ax.plot([x for x, _ in top], [y for _, y in top], "o", color=colour, markersize=4)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlim(-0.5, m.n_layers + 0.5)
            answer = f" → {visible(m.answers[probe])}" if probe in m.answers else ": not in this model's run"
            ax.set_title(f"{m.model} · {probe}{answer}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            layer_axis(ax, fontsize=8)
            if row < len(probes) - 1:
                ax.set_xlabel("")
            if col == 0:
                ax.set_ylabel("P(answer)", fontsize=8)
    handles = [Line2D([], [], color=LENS_STYLE.get(lens, ("#2ca02c", ":"))[0], linestyle=LENS_STYLE.get(lens, ("#2ca02c", ":"))[1])
               for lens in lenses] + [Line2D([], [], color="black", marker="o", markersize=4, linestyle="")]
    legend_outside(fig, handles, [f"{lens} lens" for lens in lenses] + ["dot: the answer is the lens's top-1"], fontsize=8)
    missing = [lens for lens in ("logit", "tuned") if lens not in lenses]
    fig.suptitle("Where the answer emerges: its probability at the last prompt position by layer"
                 + (f"\n(the {', '.join(missing)} lens was not run)" if missing else "\nthrough the logit and the tuned lens"),
                 x=0.02, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.2 / fig.get_figheight()))  # below the title and the legend
    return fig


def plot_answer_by_layer(models: list[AnswerByLayer], path: str | os.PathLike[str]) -> None:
    save(answer_by_layer_figure(models), path)


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
                ax.set_xlabel(DEPTH_LABEL, fontsize=9)
            ax.tick_params(labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    legend_outside(fig, handles, labels, fontsize=9)
    fig.suptitle("Logit lens, last position, by relative depth (layer / layers; 0 = embeddings)", x=0.02, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return fig


def statistics_data(facts: ModelFacts) -> dict:
    """What the statistics figure shows, from ``facts.statistics``: per relation its number of
    probes, the accuracy with its interval and the first-top-1 depths; per fact pair the whole
    answer's log-probability forward and reverse; the reliability bins; and per layer of the
    tuned lens its best temperature's calibration error and what that temperature is
    (``analysis.calibration_fit``: a fit, the grid's bound, or degenerate)."""
    n_layers = facts.n_layers
    relations = {}
    for p in facts.probes:
        relations.setdefault(p.relation or "(no relation)", []).append(p)
    accuracy = facts.tuned_accuracy or [float("nan")] * len(facts.tuned_temperature)
    return {
        "relations": [
            (name, facts.statistics["relations"][name]["accuracy"],
             [p.first_top1_layer / n_layers for p in group if p.first_top1_layer is not None], len(group))
            for name, group in relations.items()
        ],
        "pairs": [(f.answer_logprob, r.answer_logprob, f.correct, r.correct) for f, r in reverse_pairs(facts)
                  if f.answer_logprob is not None and r.answer_logprob is not None],
        "bins": (facts.statistics.get("calibration") or {}).get("bins", []),
        "best_temperature": [(layer, best, t, calibration_fit(facts.temperatures, t, accuracy[layer]))
                             for layer, _, t, best in facts.tuned_temperature],
    }


def _spans(layers: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive layers as (first, last)."""
    runs: list[tuple[int, int]] = []
    for layer in layers:
        if runs and runs[-1][1] == layer - 1:
            runs[-1] = (runs[-1][0], layer)
        else:
            runs.append((layer, layer))
    return runs


def _layers_text(layers: list[int]) -> str:
    return ", ".join(f"{a}–{b}" if b > a else str(a) for a, b in _spans(layers))


def statistics_figure(facts: ModelFacts):
    """Five panels: accuracy per relation (95% Wilson intervals), first-top-1 depth per
    relation, forward against reverse per fact pair, the reliability diagram, and each lens's
    calibration error by layer (the tuned lens's also at its best temperature per layer).
    A relation with fewer than MIN_PANEL_PROBES probes is named but not drawn in the first
    two; a layer whose best temperature is degenerate is shaded, not drawn as a fit."""
    # Kept as one function: the five panels of one figure, drawn in order on shared axes.
    data = statistics_data(facts)
    # Two rows (three panels, then two): shown at a page's width, the text stays legible.
    fig, grid = plt.subplots(2, 3, figsize=(14, 8.6))
    fig.delaxes(grid[1][2])
    axes = [*grid[0], *grid[1][:2]]
    # Probes without a relation (the default set) are "all probes" alone, "other probes" beside relations.
    unnamed = "all probes" if len(data["relations"]) == 1 else "other probes"
    shown = [r for r in data["relations"] if r[3] >= MIN_PANEL_PROBES]
    left_out = [r for r in data["relations"] if r[3] < MIN_PANEL_PROBES]
    names = [unnamed if name == "(no relation)" else name if len(name) <= 28 else name[:27] + "…" for name, _, _, _ in shown]
    ys = np.arange(len(names))
    acc, depth_ax, pair_ax, rel_ax, layer_ax = axes
    per = " per relation" if len(data["relations"]) > 1 else ""
    few = (f"{len(left_out)} of {len(data['relations'])} relations" if len(data["relations"]) > 1 else f"{left_out[0][3]} probes"
           ) if left_out else ""
    rule = f"too few to draw (a group needs {MIN_PANEL_PROBES} probes)"
    acc.set_title("accuracy" + per, fontsize=9)
    depth_ax.set_title("where the answer first becomes top-1" + per, fontsize=9)
    if shown:
        estimates = [a.estimate for _, a, _, _ in shown]
        errors = [[max(0.0, a.estimate - a.low) for _, a, _, _ in shown], [max(0.0, a.high - a.estimate) for _, a, _, _ in shown]]
        acc.barh(ys, estimates, xerr=errors, color="#4c72b0", capsize=3)
        acc.set_yticks(ys, names, fontsize=7)
        acc.set_xlim(0, 1)
        acc.set_xlabel("accuracy (final top-1 = answer), 95% CI")
        acc.invert_yaxis()
        depths = [d if d else [np.nan] for _, _, d, _ in shown]
        depth_ax.boxplot(depths, orientation="horizontal", positions=ys, widths=0.6)
        depth_ax.set_yticks(ys, names, fontsize=7)
        depth_ax.set_xlim(0, 1.02)
        depth_ax.set_xlabel("relative depth of first top-1 (logit lens)")
        depth_ax.invert_yaxis()
        if left_out:
            for ax in (acc, depth_ax):
                ax.set_title(ax.get_title() + f"\n({few} not drawn: a group needs {MIN_PANEL_PROBES} probes)", fontsize=9)
    else:
        st = facts.statistics
        depth = st["depth"]["logit"]
        too_few(acc, f"{few}: {rule}\n\nall {st['n']} probes: accuracy {st['accuracy'].text(percent=True)}")
        too_few(depth_ax, f"{few}: {rule}\n\nall {st['n']} probes: first top-1 (logit lens)\n"
                + (f"at relative depth {depth.text()}" if depth else "in none"))
    if data["pairs"]:
        colours = {(True, True): "#2ca02c", (True, False): "#1f77b4", (False, True): "#ff7f0e", (False, False): "#7f7f7f"}
        labels = {(True, True): "both right", (True, False): "forward only", (False, True): "reverse only", (False, False): "neither"}
        for key, colour in colours.items():
            pts = [(f, r) for f, r, fc, rc in data["pairs"] if (fc, rc) == key]
            if pts:
                pair_ax.scatter([f for f, _ in pts], [r for _, r in pts], s=12, color=colour, label=f"{labels[key]} ({len(pts)})")
        low = min(min(f, r) for f, r, _, _ in data["pairs"])
        pair_ax.plot([low, 0], [low, 0], color="black", linewidth=0.8)
        legend_outside(pair_ax, fontsize=7)
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
    _best_temperature(layer_ax, data["best_temperature"])
    layer_ax.set_ylim(0, 1)
    layer_ax.set_title("calibration error by layer, per lens", fontsize=9)
    layer_axis(layer_ax)
    layer_ax.set_ylabel("calibration error (ECE) of the top-1 probability")
    # Beside the panel, in the figure's free lower right.
    legend_outside(layer_ax, fontsize=7)
    st = facts.statistics
    fig.suptitle(f"{facts.model}: {st['n']} probes, accuracy {st['accuracy'].text(percent=True)}"
                 + (f"; ECE {st['calibration']['ece']:.3f}" if st.get("calibration") else ""), fontsize=10)
    fig.tight_layout()
    return fig


def _best_temperature(ax, rows: list[tuple[int, float, float, str]]) -> None:
    """The tuned lens's calibration error at its best temperature per layer: a line through
    the layers where that temperature is a fit, hollow markers where it is the grid's bound
    (the best may lie beyond it), and where it is degenerate no value, a grey strip along the
    bottom of the panel instead."""
    if not rows:
        return
    fitted = [best if kind == "fit" else np.nan for _, best, _, kind in rows]
    ax.plot([layer for layer, *_ in rows], fitted, marker=".", linewidth=1, linestyle="--", color="#2ca02c",
            label="tuned lens, best T per layer")
    bound = [(layer, best) for layer, best, _, kind in rows if kind == "bound"]
    if bound:
        ax.plot([layer for layer, _ in bound], [best for _, best in bound], "o", markersize=5, markerfacecolor="none",
                color="#2ca02c", label="best T at the grid's end\n(the best may lie beyond it)")
    degenerate = [layer for layer, _, _, kind in rows if kind == "degenerate"]
    for n, (first, last) in enumerate(_spans(degenerate)):
        ax.axvspan(first - 0.5, last + 0.5, ymin=0.0, ymax=0.04, color="0.6", zorder=0,
                   label=f"no fit at layers {_layers_text(degenerate)}:\ntop-1 accuracy 0 or 1, best T at\nthe grid's end (not a calibration)"
                   if n == 0 else None)


def plot_statistics(facts: ModelFacts, path: str | os.PathLike[str]) -> None:
    save(statistics_figure(facts), path)

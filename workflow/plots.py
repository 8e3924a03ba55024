"""Pictures of experiment 001: the logit-lens heatmap and cross-model trajectories.

Data preparation (``heatmap_data``, ``trajectories``) is separate from drawing, so
tests can check what a picture shows against the records. Drawing uses
matplotlib's Agg backend and writes PNGs without time or version metadata, so the
same records give the same bytes.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow.atomic import atomic_paths  # noqa: E402
from workflow.evaluation.analysis import ModelFacts  # noqa: E402

PNG_METADATA = {"Software": None}
VISIBLE = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣", "\ufffd": "<byte>"}
MAX_LABEL = 10


@functools.cache
def drawable() -> frozenset[int]:
    """Code points the plots' font can draw (others would render as empty boxes)."""
    from matplotlib import font_manager, ft2font

    path = font_manager.findfont(font_manager.FontProperties(family=plt.rcParams["font.family"]))
    return frozenset(ft2font.FT2Font(path).get_charmap())


def visible_char(ch: str) -> str:
    if ch in VISIBLE:
        return VISIBLE[ch]
    # Control and format characters are invisible; glyphs the font lacks draw as boxes.
    if unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn") or ord(ch) not in drawable():
        return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"
    return ch


def visible(token: str) -> str:
    """A token as a cell can show it, shortened to fit.

    Whitespace is made visible (`␣`, `\\n`); U+FFFD, what a token that is only part of a
    multi-byte character decodes to, becomes `<byte>`; characters the font cannot draw
    become their code point (`\\u4e16`), not an empty box.
    """
    text = "".join(visible_char(ch) for ch in token) or "∅"
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


@dataclass
class HeatmapData:
    model: str
    probe: str
    layers: list[int]  # rows, 0..L
    input_tokens: list[str]  # column labels, one per recorded position
    top1: list[list[str]]  # [layer][position] top-1 token
    value: np.ndarray  # [layer, position] top-1 probability (or entropy)
    value_name: str


def heatmap_data(records: pd.DataFrame, model: str, probe: str, value: str = "top1_prob") -> HeatmapData:
    """The layers x positions grid of one probe's logit-lens records."""
    rows = records[(records["probe"] == probe) & (records["lens"] == "logit")]
    if rows.empty:
        raise ValueError(f"no logit-lens records for probe {probe!r}")
    layers = sorted(rows["layer"].unique().tolist())
    positions = sorted(rows["position"].unique().tolist())
    grid = rows.set_index(["layer", "position"])
    top1 = [[grid.loc[(layer, pos), "top1_token"] for pos in positions] for layer in layers]
    values = np.array([[float(grid.loc[(layer, pos), value]) for pos in positions] for layer in layers])
    inputs = [grid.loc[(layers[0], pos), "input_token"] for pos in positions]
    return HeatmapData(model, probe, layers, inputs, top1, values, value)


def plot_heatmap(data: HeatmapData, path: str | os.PathLike[str]) -> None:
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
    ax.set_title(f"{data.model} · {data.probe}\ntop-1 token per layer and position", fontsize=10)
    fig.colorbar(image, ax=ax, label="top-1 probability" if data.value_name == "top1_prob" else data.value_name)
    fig.tight_layout()
    _save(fig, path)


TRAJECTORY_METRICS = (
    ("answer_prob", "answer probability", None),
    ("answer_rank", "answer rank", "log"),
    ("entropy", "entropy (nats)", None),
    ("kl_to_final", "KL to final (nats)", "symlog"),
)
# KL is 0 at the last layer and hundreds of nats at the embedding: linear below this, log above.
KL_LINEAR_BELOW = 0.1


def trajectories(facts: list[ModelFacts], metric: str) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """probe -> model -> (relative depths, metric values) at the last position."""
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for f in facts:
        for p in f.probes:
            depth = [step["layer"] / f.n_layers for step in p.trajectory]
            out.setdefault(p.id, {})[f.model] = (depth, [float(step[metric]) for step in p.trajectory])
    return out


def plot_trajectories(facts: list[ModelFacts], path: str | os.PathLike[str]) -> None:
    _save(trajectory_figure(facts), path)


def trajectory_figure(facts: list[ModelFacts]):
    """One row of panels per metric, one column per probe, one line per model."""
    probes = list(trajectories(facts, "answer_prob"))
    fig, axes = plt.subplots(len(TRAJECTORY_METRICS), len(probes), figsize=(2.6 * len(probes) + 1, 2.2 * len(TRAJECTORY_METRICS)),
                             squeeze=False, sharex=True)
    for row, (metric, label, scale) in enumerate(TRAJECTORY_METRICS):
        data = trajectories(facts, metric)
        for col, probe in enumerate(probes):
            ax = axes[row][col]
            for model, (x, y) in data[probe].items():
                ax.plot(x, y, marker=".", linewidth=1, label=model)
            if scale == "symlog":
                ax.set_yscale("symlog", linthresh=KL_LINEAR_BELOW)
                ax.set_ylim(bottom=0)
            elif scale:
                ax.set_yscale("log")
            if metric == "answer_prob":
                ax.set_ylim(-0.02, 1.02)  # the same scale in every panel, so probes compare
            if row == 0:
                ax.set_title(probe, fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == len(TRAJECTORY_METRICS) - 1:
                ax.set_xlabel("relative depth", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Last position, by relative depth (layer / number of layers)")
    fig.tight_layout()
    return fig


def _save(fig, path: str | os.PathLike[str]) -> None:
    with atomic_paths(path) as (tmp,):
        fig.savefig(tmp, format="png", dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def lens_quality_figure(model: str, rows: list[dict]):
    """Held-out KL to the final layer (log scale) and top-1 agreement per layer, per lens."""
    fig, (kl_ax, agree_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for lens, style in (("logit", "o-"), ("tuned", "s-")):
        mine = sorted((r for r in rows if r["lens"] == lens), key=lambda r: r["layer"])
        layers = [r["layer"] for r in mine]
        kl_ax.plot(layers, [r["kl_to_final"] for r in mine], style, markersize=3, linewidth=1, label=f"{lens} lens")
        agree_ax.plot(layers, [r["top1_agreement"] for r in mine], style, markersize=3, linewidth=1, label=f"{lens} lens")
    kl_ax.set_yscale("symlog", linthresh=KL_LINEAR_BELOW)
    kl_ax.set_ylim(bottom=0)
    kl_ax.set_ylabel("mean KL to final (nats)")
    agree_ax.set_ylim(-0.02, 1.02)
    agree_ax.set_ylabel("top-1 agreement with the last layer")
    for ax in (kl_ax, agree_ax):
        ax.set_xlabel("layer (0 = embedding)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    positions = rows[0]["positions"] if rows else 0
    fig.suptitle(f"{model} · lens quality on held-out text ({positions} positions)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_lens_quality(model: str, rows: list[dict], path: str | os.PathLike[str]) -> None:
    _save(lens_quality_figure(model, rows), path)

"""What every experiment's pictures share: readable token labels, deterministic PNGs,
axes of layers and blocks labelled with their numbering and ticked at integers, legends
outside the data, and the tuned lens's quality figure. Each experiment draws its own figures
(``workflow/experiments/exp001/plots.py``, ...), with data preparation separate from drawing so
tests can check what a picture shows against the records. Drawing uses
matplotlib's Agg backend and writes PNGs without time or version metadata, so the
same records give the same bytes.
"""

from __future__ import annotations

import functools
import os
import unicodedata

import matplotlib

# In a notebook (ipykernel sets its inline backend) figures are drawn the same way and
# shown in the page; everywhere else, Agg.
if "inline" not in os.environ.get("MPLBACKEND", ""):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from workflow.base.atomic import atomic_paths  # noqa: E402
from workflow.report.numbering import BLOCK_LABEL, DEPTH_LABEL, LAYER_LABEL  # noqa: E402,F401 (every axis says which it counts)

PNG_METADATA = {"Software": None}
VISIBLE = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣", "\ufffd": "<byte>"}
MAX_LABEL = 10
KL_LINEAR_BELOW = 0.1  # KL axes are linear below this (nats), logarithmic above

# A panel that summarises probes (an accuracy with its interval, a distribution) is drawn for
# at least this many: below it the 95% interval of an accuracy near one half spans more than
# 40 percentage points, and a box plot is a handful of points.
MIN_PANEL_PROBES = 20


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


def layer_axis(ax, axis: str = "x", unit: str = "layer", *, every: bool = False, fontsize: float | None = None) -> None:
    """Label an axis of layers or blocks (``unit``) with the numbering it counts, and tick it
    at whole numbers only: at every one with ``every`` (a heatmap's rows), else at a few."""
    from matplotlib.ticker import MaxNLocator, MultipleLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MultipleLocator(1) if every else MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    target.set_minor_locator(plt.NullLocator())
    target.set_label_text({"layer": LAYER_LABEL, "block": BLOCK_LABEL}[unit], fontsize=fontsize)


def legend_outside(owner, handles=None, labels=None, *, fontsize: float = 8, **options):
    """A legend that covers no data: beside an axes (to its right, outside it; tight and
    constrained layouts make room for it), or for a figure below everything where its layout
    is constrained (which makes room), else in the band above its panels that the figure's
    tight layout leaves free."""
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    args = () if handles is None else (handles, labels)
    if isinstance(owner, Figure):
        constrained = isinstance(owner.get_layout_engine(), ConstrainedLayoutEngine)
        return owner.legend(*args, loc="outside lower center" if constrained else "upper right", fontsize=fontsize,
                            **{"ncol": len(labels or []) or 1, **options})
    return owner.legend(*args, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=fontsize, **options)


def outline_cells(ax, mask, colour: str = "red") -> int:
    """Outline each cell of an ``imshow`` grid (rows by columns, cell centres at integers)
    where ``mask`` is true; returns how many."""
    from matplotlib.patches import Rectangle

    count = 0
    for i, row in enumerate(mask):
        for j, marked in enumerate(row):
            if marked:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=1.6, gid="answer"))
                count += 1
    return count


def too_few(ax, text: str) -> None:
    """An axes left empty, saying why (a panel with too few probes to mean anything)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes)


def save(fig, path: str | os.PathLike[str]) -> None:
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
        layer_axis(ax)
        ax.grid(alpha=0.3)
    legend_outside(agree_ax)
    positions = rows[0]["positions"] if rows else 0
    fig.suptitle(f"{model} · lens quality on held-out text ({positions} positions)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_lens_quality(model: str, rows: list[dict], path: str | os.PathLike[str]) -> None:
    save(lens_quality_figure(model, rows), path)

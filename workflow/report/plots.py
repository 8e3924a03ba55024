"""What every experiment's pictures share: readable token labels, deterministic PNGs,
and the tuned lens's quality figure. Each experiment draws its own figures
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

PNG_METADATA = {"Software": None}
VISIBLE = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣", "\ufffd": "<byte>"}
MAX_LABEL = 10
KL_LINEAR_BELOW = 0.1  # KL axes are linear below this (nats), logarithmic above


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
        ax.set_xlabel("layer (0 = embedding)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    positions = rows[0]["positions"] if rows else 0
    fig.suptitle(f"{model} · lens quality on held-out text ({positions} positions)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_lens_quality(model: str, rows: list[dict], path: str | os.PathLike[str]) -> None:
    save(lens_quality_figure(model, rows), path)

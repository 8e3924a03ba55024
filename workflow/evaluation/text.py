"""Writing figures as text, for digests and analysts of every experiment: the same
figure is written the same way everywhere, and what is float noise by nature only to
its order of magnitude (so another processor's rounding cannot change a prompt)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

EXACT_RANKS = 100  # ranks above this are written to two significant digits


def rank_text(rank: int) -> str:
    """An answer rank: exact up to EXACT_RANKS, else about it (~1500)."""
    return str(rank) if rank <= EXACT_RANKS else f"~{float(f'{rank:.2g}'):.0f}"


def magnitude_text(value: float) -> str:
    """A float-noise figure as the power of ten it does not exceed ("at most 1e-06", or "0")."""
    return "0" if value <= 0 else f"at most 1e{math.ceil(math.log10(value)):+03d}"


def source_text(source: dict[str, Any]) -> str:
    """Where a model's weights came from (the JSON's ``source``: the config entry's
    identifying fields), as every experiment's digest writes it."""
    return json.dumps(source, sort_keys=True)


def identity_text(difference: float) -> str:
    """'exactly', or 'to within 1e-06': how closely the lens reproduces the model at layer L."""
    return "exactly" if difference <= 0 else f"to within {magnitude_text(difference).removeprefix('at most ')}"


def tok(token: str) -> str:
    return "`" + repr(token)[1:-1].replace("`", "\\`") + "`"


def layer_text(layer: int | None, n_layers: int) -> str:
    return "never" if layer is None else f"{layer} ({layer / n_layers:.2f})"


def nats(x: float) -> str:
    return f"{max(x, 0.0):.2f}"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fitted(header: str, blocks: Callable[[int], list[str]], n_layers: int, max_chars: int) -> str:
    """A digest: ``header`` and ``blocks(stride)`` (the per-item texts showing every
    ``stride``-th layer), with layers thinned evenly until it fits ``max_chars`` (saying so),
    and cut at a line as a last resort."""
    stride = 1
    while True:
        note = "" if stride == 1 else f"\n(every {stride}th layer shown, to fit the size budget)"
        text = header + note + "\n\n" + "\n\n".join(blocks(stride)) + "\n"
        if len(text) <= max_chars or stride >= n_layers:
            break
        stride += 1
    if len(text) > max_chars:
        text = text[: max_chars - 40].rsplit("\n", 1)[0] + "\n(digest truncated to fit the size budget)\n"
    return text

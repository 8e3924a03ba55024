"""Writing figures as text, for digests and analysts of every experiment: the same
figure is written the same way everywhere, and what is float noise by nature only to
its order of magnitude (so another processor's rounding cannot change a prompt)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from statistics import median
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


# What can start markdown inside a line: a backslash escape, a code span, emphasis, a link
# or image ("![" needs "["), an autolink or tag, an entity, strikethrough (GitHub's) and a
# heading. Backslash-escaped, each is shown as itself. ("|" is table()'s to escape: a cell's
# pipe escaped twice splits the cell on GitHub.)
_MARKUP = re.compile(r"[\\`*_\[\]<>&~#]")
# What starts a block where the text starts a line: a list item, a thematic break or a
# setext heading's underline ("-", "+", "="), an ordered list item ("1." or "1)" and a space).
_BLOCK_START = re.compile(r"^(?:([-+=])|([0-9]{1,9})(?=[.)](?:\s|$)))")
_LINE_BREAK = re.compile(r"[\r\n]")  # CommonMark's line endings


def escaped(text: str) -> str:
    """The user's or a model's text (a relation, a probe's style, a warning quoting an
    answer, a model key) as literal markdown: wherever it is put in a line, nothing in it
    forms markup (an image, a link, emphasis, code, a heading or list, an indented code block,
    a hard line break), a line break in it is a space, and space around it is dropped.
    Every writer of an evaluation puts such text through this, or ``code``."""
    text = _MARKUP.sub(lambda m: "\\" + m.group(0), _LINE_BREAK.sub(" ", text).strip())
    return _BLOCK_START.sub(
        lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\", text, count=1
    )


def code(text: str) -> str:
    """``text`` as an inline code span, whatever it holds: fenced by more backticks than its
    longest run of them (a backtick inside cannot end it), padded with a space where it
    starts or ends with a backtick (CommonMark strips the pair), on one line."""
    text = _LINE_BREAK.sub(" ", text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def tok(token: str) -> str:
    """A token (or any text a model wrote) as code, written as Python writes it in a string
    (newlines as \\n, so every token is one line)."""
    return code(repr(token)[1:-1])


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


def counted(n: int, noun: str) -> str:
    """'1 probe', '3 probes'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def layers_text(layers: list[int], n_layers: int, noun: str = "probe", word: str = "layer") -> str:
    """Where a finding sits, in the words a reader checks against a table: "layer 30 of 30",
    "layer 13 of 18 on 3 probes and layer 16 on 1", or for many distinct layers "layers 11-17
    of 18 (median 13, over 9 probes)"."""
    counts = sorted(Counter(layers).items())
    if not counts:
        return "no " + word
    if len(counts) == 1:
        ((layer, n),) = counts
        return f"{word} {layer} of {n_layers}" + (f" (all {counted(n, noun)})" if n > 1 else "")
    if len(counts) <= 3:
        (first, n), *rest = counts
        others = [f"{word} {layer} on {n}" for layer, n in rest]
        return f"{word} {first} of {n_layers} on {counted(n, noun)}" + (", " if len(others) > 1 else " and ") + (
            " and ".join(others) if len(others) == 1 else f"{others[0]} and {others[1]}")
    return f"{word}s {counts[0][0]}–{counts[-1][0]} of {n_layers} (median {median(layers):g}, over {counted(len(layers), noun)})"

"""Every figure of an LLM-written evaluation, looked up in the data it was given.

``extract`` finds the numbers of a markdown document as a reader would read them:
decimals, integers (``1,024`` too), percentages and powers of ten (``1e-05``); not the
digits of names (``gemma-3-270m``, ``SmolLM2``, ``Llama-3-8B``), of code spans, links
or list markers. ``Evidence`` holds the numbers of what the evaluator was given (the
rendered prompt: its digest, metadata and, for the later stages, the evaluations before)
and of the offline analyst's document for the same facts (figures the data gives by
fixed rules: counts, medians, shares); a percentage counts as its fraction too.

A figure is supported when a number of the evidence, rounded to the figure's precision,
is the figure (``0.52`` is supported by ``0.5213``, ``24`` by ``24``), or when it is as
precise as the figure and equal (``0.520`` by ``0.52``). A figure more precise than
anything the evaluator was given (``0.5213`` where the digest has ``0.52``) is not:
those digits were not in the data. Signs are ignored (a difference may be written either
way round). Numbers written as words are not figures here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from workflow.evaluation.templates import HEADING

NUMBER = re.compile(
    r"(?<![\w.])"  # not inside a word, an identifier or another number
    r"(?P<text>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"(?P<percent>\s?%)?"
    r"(?![\w]|\.\d)"
)
# Code spans (fenced by any run of backticks: ``a`b``), link targets, tags.
CODE = re.compile(r"(?<!`)(`+)(?!`)[^\n]*?(?<!`)\1(?!`)|\]\([^)\n]*\)|<[^>\n]*>")
LIST_MARKER = re.compile(r"^(\s*)\d+[.)](?=\s)", re.MULTILINE)
MARK = " [not in the data]"


@dataclass(frozen=True)
class Figure:
    text: str  # as written ("0.52", "85%", "1e-05")
    value: float  # its magnitude
    quantum: float  # its precision: 0.01 for "0.52", 1 for "24", 1e-06 for "1e-06"
    start: int  # where it is in the document
    end: int
    section: str  # the level-2 section it is in ("" before the first)


# Powers of ten a quantum is kept within: a token such as "9e999" in a random model's
# vocabulary reads as a number, and 10.0 ** 999 overflows.
QUANTUM_POWERS = (-320, 300)


def _quantum(text: str) -> float:
    mantissa, _, exponent = text.lower().replace(",", "").partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    low, high = QUANTUM_POWERS
    return 10.0 ** min(high, max(low, int(exponent or 0) - decimals))


def _blanked(markdown: str) -> str:
    """``markdown`` with code spans, link targets, tags and list markers blanked out (same length)."""
    text = CODE.sub(lambda m: " " * len(m.group(0)), markdown)
    return LIST_MARKER.sub(lambda m: m.group(1) + " " * (len(m.group(0)) - len(m.group(1))), text)


def _hyphenated(text: str, start: int) -> bool:
    """The number at ``start`` follows a hyphen that follows a letter: part of a name (gemma-3)."""
    return start >= 2 and text[start - 1] == "-" and text[start - 2].isalpha()


def extract(markdown: str) -> list[Figure]:
    text = _blanked(markdown)
    bounds = [(m.start(), m.group(1).strip()) for m in HEADING.finditer(markdown)]
    figures = []
    for match in NUMBER.finditer(text):
        start = match.start("text")
        if _hyphenated(text, start):
            continue
        line_start = text.rfind("\n", 0, start) + 1
        if text[line_start:start].lstrip().startswith("#"):  # in a heading
            continue
        written = match.group("text")
        value = float(written.replace(",", ""))
        quantum = _quantum(written)
        section = next((h for s, h in reversed(bounds) if s <= start), "")
        figures.append(Figure(match.group(0).strip(), value, quantum, start, match.end(), section))
    return figures


def _forms(figure: Figure) -> list[tuple[float, float]]:
    """(value, quantum) pairs a figure stands for: a percentage also as its fraction."""
    forms = [(figure.value, figure.quantum)]
    if figure.text.endswith("%"):
        forms.append((figure.value / 100, figure.quantum / 100))
    return forms


# Keys whose values are the user's own text (probes, pairs: in the config, the JSON and the
# facts), not measured values: a number in a prompt ("... 0.999 ...") or a relation's name
# ("founded in 1887") is no evidence for a figure.
USER_TEXT_KEYS = ("prompt", "answer", "relation", "style", "clean", "corrupted", "clean_answer", "corrupted_answer",
                  "clean_prompt", "corrupted_prompt")


def user_texts(facts: Any) -> list[str]:
    """Every string under USER_TEXT_KEYS in ``facts`` (dicts, lists, dataclasses), longest first."""
    found: set[str] = set()
    seen: set[int] = set()

    def walk(value: Any) -> None:
        if id(value) in seen or isinstance(value, (str, bytes, int, float, bool)) or value is None:
            return
        seen.add(id(value))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            for key, item in value.items():
                if key in USER_TEXT_KEYS and isinstance(item, str) and item.strip():
                    found.add(item)
                else:
                    walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(facts)
    return sorted(found, key=len, reverse=True)


def _written(quoted: str) -> re.Pattern[str]:
    """``quoted`` as a document writes it: as it is, markdown-escaped (evaluation.text.escaped)
    or as Python writes it in a string (``repr``, evaluation.text.tok): any backslashes
    before a character, a line break also as a space or ``\\n``, the space around it
    optional. Not where it is part of a longer word or number (a probe answering " 1" is
    not in "15.3")."""
    quoted = quoted.strip()
    breaks = {"\n": "n", "\r": "r"}
    chars = "".join(
        rf"(?:\\*{breaks[c]}|\s)" if c in breaks else r"\\*" + re.escape(c) for c in quoted
    )
    before = r"(?<![\w.])" if quoted[:1].isalnum() else ""
    after = r"(?!\w|\.\d)" if quoted[-1:].isalnum() else ""
    return re.compile(before + chars + after)


def _blank(text: str, user: list[str]) -> str:
    """``text`` with every written form of the user's texts blanked (same length). Only texts
    with a digit can hold a number; longest first, so a prompt goes before an answer in it."""
    for quoted in sorted((u for u in user if any(c.isdigit() for c in u)), key=len, reverse=True):
        text = _written(quoted).sub(lambda m: " " * len(m.group(0)), text)
    return text


class Evidence:
    """The numbers an evaluation may cite: those of ``texts``, less the numbers inside the
    user's own text (``user``: probe prompts, answers and relations, which a document may
    quote, escaped or not)."""

    def __init__(self, *texts: str, user: tuple[str, ...] | list[str] = ()):
        self.numbers: list[tuple[float, float]] = []
        for text in texts:
            text = _blank(text, list(user))
            for figure in extract(text):
                if text.startswith(MARK, figure.end):  # marked unsupported in an earlier evaluation
                    continue
                self.numbers += _forms(figure)
                if not figure.text.endswith("%") and figure.value <= 1:  # a fraction, cited as a percentage
                    self.numbers.append((figure.value * 100, figure.quantum * 100))
        self.numbers.sort()
        self._values = [v for v, _ in self.numbers]

    def supports(self, figure: Figure) -> bool:
        import bisect

        for value, quantum in _forms(figure):
            # Numbers that could round to the figure lie within half a quantum of it.
            tolerance = quantum * (0.5 + 1e-9)
            lo = bisect.bisect_left(self._values, value - tolerance - 1e-12)
            hi = bisect.bisect_right(self._values, value + tolerance + 1e-12)
            for known, known_quantum in self.numbers[lo:hi]:
                if known_quantum <= quantum * (1 + 1e-9):
                    if _rounds_to(known, quantum, value):
                        return True
                elif math.isclose(known, value, rel_tol=1e-9, abs_tol=1e-12):
                    return True
        return False


def _rounds_to(known: float, quantum: float, value: float) -> bool:
    """Whether ``known`` written to ``quantum``'s precision reads ``value`` (half up or down: the
    writer's rounding of a tie is not known)."""
    return abs(known - value) <= quantum * 0.5 * (1 + 1e-9) + 1e-12


@dataclass
class Verification:
    checked: int
    unsupported: list[Figure]

    def record(self) -> dict:
        """What the provenance record keeps."""
        return {
            "figures_checked": self.checked,
            "figures_not_found": [{"figure": f.text, "section": f.section} for f in self.unsupported],
        }

    def section(self, mode: str) -> str:
        """The evaluation's last section: how many figures were checked, which were not found."""
        found = self.checked - len(self.unsupported)
        text = (
            f"{self.checked} figures in this evaluation were looked up in the digest and metadata it was given and in the "
            f"figures the offline analyst computes from the same records: {found} found"
        )
        if not self.unsupported:
            return "## Verification\n\n" + text + ", none missing.\n"
        listed = ", ".join(f"{f.text} ({f.section or 'before the first section'})" for f in self.unsupported)
        what = f"marked {MARK.strip()}" if mode == "mark" else "listed"
        return f"## Verification\n\n{text}; {len(self.unsupported)} not found, {what} in the text: {listed}.\n"


def verify(markdown: str, evidence: Evidence) -> Verification:
    figures = extract(markdown)
    return Verification(len(figures), [f for f in figures if not evidence.supports(f)])


def marked(markdown: str, unsupported: list[Figure]) -> str:
    """``markdown`` with MARK after each unsupported figure."""
    for figure in sorted(unsupported, key=lambda f: f.end, reverse=True):
        markdown = markdown[: figure.end] + MARK + markdown[figure.end:]
    return markdown

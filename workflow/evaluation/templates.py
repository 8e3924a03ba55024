"""Prompt templates: YAML front matter declaring the required headings, then the prompt.

A template file looks like::

    ---
    headings: [Summary, Where the answer emerges, ...]
    system: You are ...
    ---
    Prompt text with ${variables}.

``${name}`` placeholders are filled by ``render`` (string.Template syntax; write
``$$`` for a literal dollar). The output of an evaluation must contain every
declared heading as a level-2 markdown heading (``## Summary``), in order, each with
at least ``min_section_chars`` characters of content under it (front matter; default
MIN_SECTION_CHARS). ``figures`` (front matter: ``mark``, the default, or ``strict``)
decides what happens to a figure of an LLM-written evaluation that the data it was
given does not hold (workflow/evaluation/figures.py): marked in the text and listed, or
the job fails naming it.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workflow.base.errors import UserError

FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n(.*)\Z", re.DOTALL)
HEADING = re.compile(r"^##[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
TITLE = re.compile(r"\A\s*#[ \t]+[^\n]*\n?")
# Characters of content a required section needs at least, by default: more than a stub
# ("See above.", "N/A"), less than one sentence with a figure.
MIN_SECTION_CHARS = 40
FIGURE_MODES = ("mark", "strict")


@dataclass(frozen=True)
class PromptTemplate:
    path: str
    headings: tuple[str, ...]
    system: str
    body: str
    sha256: str
    min_section_chars: int = MIN_SECTION_CHARS
    figures: str = "mark"

    def render(self, variables: dict[str, Any]) -> str:
        values = {k: str(v) for k, v in variables.items()}
        values.setdefault("headings", "\n".join(f"## {h}" for h in self.headings))
        try:
            return string.Template(self.body).substitute(values)
        except KeyError as error:
            known = ", ".join(sorted(values))
            raise UserError(
                f"{self.path}: unknown variable ${{{error.args[0]}}}; the variables for this template are: {known}"
            ) from None
        except ValueError as error:
            raise UserError(f"{self.path}: bad placeholder ({error}); write $$ for a literal dollar sign") from None


def load_template(path: str | Path) -> PromptTemplate:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt template {str(path)!r} does not exist") from None
    match = FRONT_MATTER.match(text)
    if not match:
        raise UserError(f"{path}: a template starts with YAML front matter between '---' lines (see prompts/README.md)")
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: front matter is not valid YAML: {error}") from None
    headings = meta.get("headings")
    if not isinstance(headings, list) or not headings or not all(isinstance(h, str) and h.strip() for h in headings):
        raise UserError(f"{path}: front matter must declare `headings:`, a non-empty list of heading texts")
    minimum = meta.get("min_section_chars", MIN_SECTION_CHARS)
    if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 1:
        raise UserError(f"{path}: front matter `min_section_chars` must be a whole number of characters, at least 1 (got {minimum!r})")
    figures = meta.get("figures", "mark")
    if figures not in FIGURE_MODES:
        raise UserError(f"{path}: front matter `figures` must be one of {', '.join(FIGURE_MODES)} (got {figures!r})")
    return PromptTemplate(
        path=str(path),
        headings=tuple(h.strip() for h in headings),
        system=str(meta.get("system", "")).strip(),
        body=match.group(2),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        min_section_chars=minimum,
        figures=figures,
    )


def heading_problems(markdown: str, required: tuple[str, ...]) -> list[str]:
    """What is wrong with ``markdown``'s level-2 headings; empty when it meets the contract."""
    found = [h.strip() for h in HEADING.findall(markdown)]
    normalised = [h.casefold() for h in found]
    problems = []
    position = -1
    for heading in required:
        try:
            index = normalised.index(heading.casefold(), position + 1)
        except ValueError:
            if heading.casefold() in normalised:
                problems.append(f"heading '## {heading}' is out of order")
            else:
                problems.append(f"heading '## {heading}' is missing")
            continue
        position = index
    return problems


def sections(markdown: str) -> list[tuple[str, str]]:
    """(heading, body) of every level-2 section of ``markdown``, in order; a body runs to
    the next level-2 heading (level-3 and deeper headings are part of it)."""
    found = list(HEADING.finditer(markdown))
    return [
        (m.group(1).strip(), markdown[m.end(): found[i + 1].start() if i + 1 < len(found) else len(markdown)])
        for i, m in enumerate(found)
    ]


def content_length(body: str) -> int:
    """Characters of a section's content: its text without headings, blank lines or the
    whitespace around lines."""
    return sum(len(line.strip()) for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def failing_sections(markdown: str, required: tuple[str, ...], min_chars: int) -> dict[str, str]:
    """The required headings whose section is missing, out of order or has less than
    ``min_chars`` characters of content: heading -> what is wrong."""
    problems = {}
    for problem in heading_problems(markdown, required):
        heading = problem.split("'## ", 1)[1].rsplit("'", 1)[0]
        problems[heading] = problem
    bodies = {h.casefold(): b for h, b in reversed(sections(markdown))}  # the first of a repeated heading
    for heading in required:
        if heading in problems:
            continue
        length = content_length(bodies.get(heading.casefold(), ""))
        if length < min_chars:
            problems[heading] = (f"section '## {heading}' is empty" if length == 0 else
                                 f"section '## {heading}' has {length} characters of content, fewer than {min_chars}")
    return {h: problems[h] for h in required if h in problems}


def without_title(markdown: str) -> str:
    """``markdown`` without a leading level-1 title line (the pipeline writes its own)."""
    return TITLE.sub("", markdown, count=1).lstrip("\n")


def merged(draft: str, repair: str, required: tuple[str, ...], replace: set[str]) -> str:
    """The required sections in order: those in ``replace`` from ``repair`` (where it has
    them), the others from ``draft``. Text outside the required sections is dropped."""
    def by_heading(markdown: str) -> dict[str, str]:
        return {h.casefold(): b for h, b in reversed(sections(markdown))}

    first, second = by_heading(draft), by_heading(repair)
    parts = []
    for heading in required:
        key = heading.casefold()
        source = second if heading in replace and key in second else first
        if key in source:
            parts.append(f"## {heading}\n\n{source[key].strip()}\n")
    return "\n".join(parts)

"""The offline analyst: a deterministic, rule-based writer of evaluations.

It needs no network and no LLM. Each experiment gives the rules of its sections
(``workflow/experiments/exp001/sections.py``, ...): every sentence is a figure computed from the
recorded outputs put into words by fixed rules, so the same outputs always give the
same document. It fills the headings the template declares, in the template's order;
a heading it has no rule for gets a note saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

ATTRIBUTION = (
    "*Written by the offline analyst: deterministic rules applied to the recorded outputs. "
    "No LLM was used; switch `evaluation.provider` in config/config.yaml for an LLM-written evaluation.*"
)


def write(stage: str, title: str, headings: tuple[str, ...], facts: Any, sections: Mapping[str, Callable[[Any], str]]) -> str:
    """The markdown document for ``stage``, with ``headings`` in order, each written by
    the rule ``sections`` has for it (by heading, case-insensitively)."""
    parts = [f"# {title}", "", ATTRIBUTION, ""]
    for heading in headings:
        writer = sections.get(heading.casefold())
        body = (
            writer(facts)
            if writer
            else "The offline analyst has no rule for this heading. Use an LLM provider to have it written."
        )
        parts += [f"## {heading}", "", body.strip(), ""]
    return "\n".join(parts).rstrip() + "\n"

"""Prompt templates: YAML front matter declaring the required headings, then the prompt.

A template file looks like::

    ---
    headings: [Summary, Where the answer emerges, ...]
    system: You are ...
    ---
    Prompt text with ${variables}.

``${name}`` placeholders are filled by ``render`` (string.Template syntax; write
``$$`` for a literal dollar). The output of an evaluation must contain every
declared heading as a level-2 markdown heading (``## Summary``), in order.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workflow.errors import UserError

FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n(.*)\Z", re.DOTALL)
HEADING = re.compile(r"^##[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptTemplate:
    path: str
    headings: tuple[str, ...]
    system: str
    body: str
    sha256: str

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
    return PromptTemplate(
        path=str(path),
        headings=tuple(h.strip() for h in headings),
        system=str(meta.get("system", "")).strip(),
        body=match.group(2),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
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

"""Experiment 005's prompts (after Wendler et al. 2024, "Do Llamas Work in English?"): for each
task (a kind and its languages) and kept concept, a few-shot prompt whose next token is the
first token of the concept's word in the target language.

- translation, source -> target: ``Français: "livre" - Deutsch: "Buch"`` lines of other
  concepts, then ``Français: "fleur" - Deutsch: "``;
- repetition, target: the same with the target language on both sides;
- cloze, target: ``Ein "___" ... Deutsch: "Buch"`` lines (data/cloze.tsv: a sentence in the
  target language describing a concept, its word left blank), then the concept's sentence and
  ``Deutsch: "``.

The demonstrations of a concept are the ``demonstrations`` concepts after it in the word list
(wrapping around), whatever else is kept: a concept's prompt is its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.base.errors import UserError
from workflow.experiments.exp005.words import LANGUAGES, WORDS, read_tsv

KINDS = ("translation", "repetition", "cloze")
# Each language's name in itself: the prompts' labels.
LANGUAGE_NAMES = {"en": "English", "fr": "Français", "de": "Deutsch", "es": "Español", "it": "Italiano"}
CLOZE = WORDS.with_name("cloze.tsv")
BLANK = '"___"'


@dataclass(frozen=True)
class Task:
    """One prompt kind and its languages (``source`` is ``target`` for repetition and cloze)."""

    kind: str
    source: str
    target: str

    @property
    def id(self) -> str:
        """``translation-fr-de``, ``repetition-de``, ``cloze-de``: the records' ``task``."""
        return f"{self.kind}-{self.source}-{self.target}" if self.kind == "translation" else f"{self.kind}-{self.target}"

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Task:
        """A task from its config entry (``words.tasks``; the schema checked its keys)."""
        kind, target = entry["kind"], entry["target"]
        if kind == "translation":
            if "source" not in entry or entry["source"] == target:
                raise UserError(f"config key words.tasks: a translation task needs a source language other than its target ({entry})")
            return cls(kind, entry["source"], target)
        if "source" in entry and entry["source"] != target:
            raise UserError(f"config key words.tasks: a {kind} task has one language, its target; remove source from {entry}")
        return cls(kind, target, target)


def load_cloze(concepts: list[dict[str, str]], path: str | Path = CLOZE) -> list[dict[str, str]]:
    """The cloze sentences of ``concepts`` (data/cloze.tsv, one row per concept in the word
    list's order, keyed by the English word): per concept, language -> sentence with BLANK."""
    rows = read_tsv(path, "the cloze sentences")
    if [row.get("en") for row in rows] != [c["en"] for c in concepts]:
        raise UserError(f"{path}: its en column must list the word list's English words in the word list's order")
    for number, row in enumerate(rows, start=2):
        for language in LANGUAGES[1:]:
            if (row.get(language) or "").count(BLANK) != 1:
                raise UserError(f"{path}, line {number}: the {language} sentence must hold {BLANK} once")
    return [{language: row[language] for language in LANGUAGES[1:]} for row in rows]


def _line(task: Task, concept: dict[str, str], cloze: dict[str, str] | None, answer: bool) -> str:
    said = f'{LANGUAGE_NAMES[task.target]}: "' + (concept[task.target] + '"' if answer else "")
    if task.kind == "cloze":
        assert cloze is not None
        return f"{cloze[task.target]} {said}"
    return f'{LANGUAGE_NAMES[task.source]}: "{concept[task.source]}" - {said}'


def prompt(task: Task, concepts: list[dict[str, str]], index: int, demonstrations: int,
           cloze: list[dict[str, str]] | None = None) -> str:
    """The prompt of concept ``concepts[index]`` for ``task``: ``demonstrations`` lines of the
    concepts after it, then its own line up to the opening quotation mark of the answer."""
    if task.kind == "cloze" and cloze is None:
        raise ValueError("a cloze prompt needs the cloze sentences")
    n = len(concepts)
    others = [(index + k) % n for k in range(1, demonstrations + 1)]
    lines = [_line(task, concepts[i], cloze[i] if cloze else None, True) for i in others]
    return "\n".join([*lines, _line(task, concepts[index], cloze[index] if cloze else None, False)])

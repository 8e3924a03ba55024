"""Experiment 005's word list (``data/words.tsv``): 100 concrete nouns, each row one concept
in English, French, German, Spanish and Italian, written for the project (data/README.md).

A concept is scored through single tokens: for a pair of languages (source, target), it is
kept where its target word, its English word and its source word are each one token of the
model's tokenizer as the prompts place them (after a quotation mark: no leading space), and
where the target word is neither the English word nor, translating, the source word
(``"table"`` is French and English: which one a layer holds cannot be told). ``kept_words`` says how many were kept and
why the others were not.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from workflow.base.errors import UserError

WORDS = Path(__file__).resolve().parents[3] / "data" / "words.tsv"
LANGUAGES = ("en", "fr", "de", "es", "it")


def load_words(path: str | Path = WORDS) -> list[dict[str, str]]:
    """The concepts of a word list: one dict per row, language code -> word."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as error:
        raise UserError(f"{path}: the word list cannot be read ({error.strerror})") from None
    if not rows or set(rows[0]) != set(LANGUAGES):
        raise UserError(f"{path}: a word list's header names the languages {', '.join(LANGUAGES)}, tab-separated")
    for number, row in enumerate(rows, start=2):
        empty = [language for language in LANGUAGES if not (row.get(language) or "").strip()]
        if empty:
            raise UserError(f"{path}, line {number}: no word for {', '.join(empty)}")
    return [{language: row[language].strip() for language in LANGUAGES} for row in rows]


def single_token(tokenizer, word: str, leading_space: bool = False) -> int | None:
    """The token id of ``word`` (after a space with ``leading_space``: the prompt puts it after
    a space, not a quotation mark) where the tokenizer makes it one token, else None."""
    ids = tokenizer((" " if leading_space else "") + word, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


@dataclass
class KeptWords:
    """The concepts of one language pair a model can be scored on, and why the others were not."""

    source: str
    target: str
    concepts: list[dict[str, str]] = field(default_factory=list)
    tokens: list[dict[str, int]] = field(default_factory=list)  # per kept concept: role -> token id
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> concepts

    def counts(self) -> dict[str, int]:
        return {"kept": len(self.concepts), **self.dropped}


def kept_words(tokenizer, concepts: list[dict[str, str]], source: str, target: str, leading_space: bool = False) -> KeptWords:
    """The concepts of ``concepts`` whose target, English and source words are each one token
    (``single_token``) and whose target word is neither of the others (``KeptWords``)."""
    kept = KeptWords(source, target)
    for concept in concepts:
        roles = {"target": concept[target], "english": concept["en"], "source": concept[source]}
        others = [roles["english"]] + ([roles["source"]] if source != target else [])  # repetition: source = target
        if roles["target"].casefold() in [word.casefold() for word in others]:
            reason = "target word is the English or source word"
        else:
            ids = {role: single_token(tokenizer, word, leading_space) for role, word in roles.items()}
            missing = [role for role, token in ids.items() if token is None]
            if not missing:
                kept.concepts.append(concept)
                kept.tokens.append(ids)
                continue
            reason = f"{missing[0]} word is several tokens"
        kept.dropped[reason] = kept.dropped.get(reason, 0) + 1
    return kept

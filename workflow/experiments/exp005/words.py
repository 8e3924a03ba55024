"""Experiment 005's word list (``data/words.tsv``): 100 concrete nouns, each row one concept
in English, French, German, Spanish and Italian, written for the project (data/README.md).

A concept is scored through tokens: for a pair of languages (source, target), its target
word, its English word and its source word are each tokenised as the prompts place them
(after a quotation mark: no leading space). With ``scoring="single"`` a concept is kept where
each of the three is one token; with ``scoring="first"`` every word is scored by its first
token (most French and German words are several tokens in an English-centred vocabulary),
and a concept is kept where the target's first token differs from the others' (otherwise
which word a layer holds cannot be told). Either way the target word must be neither the
English word nor, translating, the source word (``"table"`` is French and English).
``kept_words`` says how many were kept, how many of them are whole words, and why the others
were not.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from workflow.base.errors import UserError

WORDS = Path(__file__).resolve().parents[3] / "data" / "words.tsv"
LANGUAGES = ("en", "fr", "de", "es", "it")


def read_tsv(path: str | Path, what: str) -> list[dict[str, str]]:
    """The rows of a tab-separated file with a header line, column -> text; a file that cannot
    be read is refused naming it and ``what`` it holds."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))
    except OSError as error:
        raise UserError(f"{path}: {what} cannot be read ({error.strerror})") from None


def load_words(path: str | Path = WORDS) -> list[dict[str, str]]:
    """The concepts of a word list: one dict per row, language code -> word."""
    rows = read_tsv(path, "the word list")
    if not rows or set(rows[0]) != set(LANGUAGES):
        raise UserError(f"{path}: a word list's header names the languages {', '.join(LANGUAGES)}, tab-separated")
    for number, row in enumerate(rows, start=2):
        empty = [language for language in LANGUAGES if not (row.get(language) or "").strip()]
        if empty:
            raise UserError(f"{path}, line {number}: no word for {', '.join(empty)}")
    return [{language: row[language].strip() for language in LANGUAGES} for row in rows]


SCORINGS = ("first", "single")


def word_tokens(tokenizer, word: str, leading_space: bool = False) -> list[int]:
    """The token ids of ``word`` (after a space with ``leading_space``: the prompt puts it after
    a space, not a quotation mark)."""
    return [int(t) for t in tokenizer((" " if leading_space else "") + word, add_special_tokens=False)["input_ids"]]


def single_token(tokenizer, word: str, leading_space: bool = False) -> int | None:
    """The token id of ``word`` where the tokenizer makes it one token, else None."""
    ids = word_tokens(tokenizer, word, leading_space)
    return ids[0] if len(ids) == 1 else None


@dataclass
class KeptWords:
    """The concepts of one language pair a model can be scored on, and why the others were not."""

    source: str
    target: str
    concepts: list[dict[str, str]] = field(default_factory=list)
    tokens: list[dict[str, int]] = field(default_factory=list)  # per kept concept: role -> (first) token id
    whole: list[dict[str, bool]] = field(default_factory=list)  # per kept concept: role -> one token
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> concepts

    def counts(self) -> dict[str, int]:
        return {"kept": len(self.concepts), **self.dropped}

    @property
    def whole_words(self) -> int:
        """Kept concepts whose three words are each one token."""
        return sum(all(flags.values()) for flags in self.whole)


ROLES = ("target", "english", "source")


def kept_words(tokenizer, concepts: list[dict[str, str]], source: str, target: str, leading_space: bool = False,
               scoring: str = "single") -> KeptWords:
    """The concepts of ``concepts`` that can be scored for ``source`` -> ``target``
    (``KeptWords``): their target word is neither the English nor the source word, and with
    ``scoring`` "single" each of the three words is one token, with "first" the target's
    first token is neither the English word's nor the source word's."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring {scoring!r} is not one of {', '.join(SCORINGS)}")
    kept = KeptWords(source, target)
    repetition = source == target
    for concept in concepts:
        roles = {"target": concept[target], "english": concept["en"], "source": concept[source]}
        others = [roles["english"]] + ([] if repetition else [roles["source"]])
        if roles["target"].casefold() in [word.casefold() for word in others]:
            reason = "target word is the English or source word"
        else:
            ids = {role: word_tokens(tokenizer, word, leading_space) for role, word in roles.items()}
            whole = {role: len(tokens) == 1 for role, tokens in ids.items()}
            firsts = {role: tokens[0] for role, tokens in ids.items()}
            several = [role for role in ROLES if not whole[role]]
            clash = [role for role in ("english", "source") if firsts[role] == firsts["target"] and not (repetition and role == "source")]
            if scoring == "single" and several:
                reason = f"{several[0]} word is several tokens"
            elif clash:
                reason = f"target and {clash[0]} words share their first token"
            else:
                kept.concepts.append(concept)
                kept.tokens.append(firsts)
                kept.whole.append(whole)
                continue
        kept.dropped[reason] = kept.dropped.get(reason, 0) + 1
    return kept

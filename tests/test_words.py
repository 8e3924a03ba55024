"""Experiment 005's word list (data/words.tsv, workflow/experiments/exp005/words.py): what it
holds, and which concepts each embedded model's tokenizer keeps, checked word by word."""

from __future__ import annotations

import pytest

from pipeline import prepared_model
from workflow.base.errors import UserError
from workflow.experiments.exp005.words import LANGUAGES, kept_words, load_words

PAIRS = [("fr", "de"), ("de", "fr"), ("es", "it"), ("it", "es"), ("fr", "fr")]


def test_the_shipped_list_holds_a_hundred_concepts_in_five_languages():
    concepts = load_words()
    assert len(concepts) == 100 and all(set(c) == set(LANGUAGES) for c in concepts)
    assert len({c["en"] for c in concepts}) == 100  # one row per concept
    for language in LANGUAGES:
        assert all(c[language] and " " not in c[language] for c in concepts), language
    assert {"en": "flower", "fr": "fleur", "de": "Blume", "es": "flor", "it": "fiore"} in concepts


# Concepts kept for French -> German, seen: SmolLM2's 49k English-centred vocabulary holds
# few French and German words whole (1 after a quotation mark, 4 after a space); Gemma's
# 262k vocabulary 13 and 62.
LEAST_FR_DE = {("smollm2-135m-instruct", False): 1, ("smollm2-135m-instruct", True): 1,
               ("gemma-3-270m", False): 10, ("gemma-3-270m", True): 50}


@pytest.mark.parametrize("leading_space", [False, True])
@pytest.mark.parametrize("key", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_each_kept_concept_is_three_single_tokens_and_the_counts_add_up(key, leading_space, tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepared_model(key, tmp_path_factory))
    concepts = load_words()
    space = " " if leading_space else ""
    for source, target in PAIRS:
        kept = kept_words(tokenizer, concepts, source, target, leading_space)
        assert sum(kept.counts().values()) == len(concepts)
        for concept, tokens in zip(kept.concepts, kept.tokens):
            for role, language in (("target", target), ("english", "en"), ("source", source)):
                ids = tokenizer.encode(space + concept[language], add_special_tokens=False)
                assert ids == [tokens[role]], (key, concept[language], ids)
            assert concept[target].casefold() != concept["en"].casefold()
            assert source == target or concept[target].casefold() != concept[source].casefold()
    # Repetition (the source word asked for again): only the English word must differ.
    assert kept_words(tokenizer, concepts, "fr", "fr", leading_space).dropped.get("target word is the English or source word") == sum(
        c["fr"].casefold() == c["en"].casefold() for c in concepts)
    fr_de = kept_words(tokenizer, concepts, "fr", "de", leading_space).counts()["kept"]
    assert fr_de >= LEAST_FR_DE[key, leading_space], fr_de


def test_a_word_list_without_a_word_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "words.tsv"
    path.write_text("en\tfr\tde\tes\tit\nbook\tlivre\t\tlibro\tlibro\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"words\.tsv, line 2: no word for de"):
        load_words(path)
    path.write_text("en\tfr\nbook\tlivre\n", encoding="utf-8")
    with pytest.raises(UserError, match="header names the languages en, fr, de, es, it"):
        load_words(path)


@pytest.mark.parametrize("key", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_first_token_scoring_keeps_the_concepts_whose_target_begins_unlike_the_others(key, tmp_path_factory):
    """words.scoring: first: each word by its first token; a concept is dropped only where the
    target word is another role's word or begins with the same token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepared_model(key, tmp_path_factory))
    concepts = load_words()
    kept = kept_words(tokenizer, concepts, "fr", "de", scoring="first")
    assert sum(kept.counts().values()) == len(concepts)
    firsts = {c["en"]: {lang: tokenizer.encode(c[lang], add_special_tokens=False) for lang in ("de", "en", "fr")} for c in concepts}
    expected = [c["en"] for c in concepts
                if c["de"].casefold() not in (c["en"].casefold(), c["fr"].casefold())
                and firsts[c["en"]]["de"][0] not in (firsts[c["en"]]["en"][0], firsts[c["en"]]["fr"][0])]
    assert [c["en"] for c in kept.concepts] == expected
    for concept, tokens, whole in zip(kept.concepts, kept.tokens, kept.whole):
        ids = firsts[concept["en"]]
        assert tokens == {"target": ids["de"][0], "english": ids["en"][0], "source": ids["fr"][0]}
        assert whole == {"target": len(ids["de"]) == 1, "english": len(ids["en"]) == 1, "source": len(ids["fr"]) == 1}
    # Many more concepts than whole words allow (seen: 93 of 100 on both models).
    assert len(kept.concepts) >= 85 and kept.whole_words < len(kept.concepts)
    with pytest.raises(ValueError, match="scoring 'last'"):
        kept_words(tokenizer, concepts, "fr", "de", scoring="last")

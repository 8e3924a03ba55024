"""Experiment 005, words or concepts: its prompts, its records against an independent lens
(plain transformers) and against the patchscope as its paper describes it (a hooked forward),
records that do not depend on which other concepts are kept, and the rule its evaluations
apply, checked on records written by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from pipeline import prepared_model
from reference import reference_layers
from test_patchscope import hooked_patchscope
from workflow.base.errors import UserError
from workflow.config.settings import LensSettings, PatchscopeSettings
from workflow.experiments.exp005 import analysis
from workflow.experiments.exp005.analysis import READABLE, model_facts
from workflow.experiments.exp005.prompts import Task, load_cloze, prompt
from workflow.experiments.exp005.records import RECORD_COLUMNS
from workflow.experiments.exp005.run import WordsSettings, run_words
from workflow.experiments.exp005.sections import SINGLE, answer
from workflow.experiments.exp005.words import load_words
from workflow.lens.patchscope import INSPECTION_PROMPT
from workflow.lens.session import LensSession
from workflow.model.load import load_model

TASKS = [{"kind": "translation", "source": "fr", "target": "de"}, {"kind": "repetition", "target": "fr"},
         {"kind": "cloze", "target": "de"}]


def settings(max_words: int, tasks=TASKS) -> WordsSettings:
    return WordsSettings.from_config({"tasks": tasks, "max_words": max_words})


def session(model) -> LensSession:
    """The lenses 005 reads without a tuned lens: the logit lens and the patchscope (its defaults)."""
    return LensSession(model, LensSettings(positions="last"), patchscope=PatchscopeSettings())


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    folder = prepared_model("smollm2-135m-instruct", tmp_path_factory)
    model = load_model("smollm2", {"source": "local", "path": str(folder)}, None, device="cpu", dtype="float32", backend="hooks")
    return folder, model


@pytest.fixture(scope="module")
def smollm2_words(smollm2):
    folder, model = smollm2
    return run_words(session(model), settings(3))


def test_the_prompts_are_the_papers_few_shot_lines_ending_at_the_answers_quotation_mark():
    concepts = load_words()
    flower = next(i for i, c in enumerate(concepts) if c["en"] == "flower")
    text = prompt(Task.of(TASKS[0]), concepts, flower, 2)
    lines = text.split("\n")
    assert lines[-1] == 'Français: "fleur" - Deutsch: "'
    assert lines[:2] == [f'Français: "{concepts[flower + k]["fr"]}" - Deutsch: "{concepts[flower + k]["de"]}"' for k in (1, 2)]
    assert prompt(Task.of(TASKS[1]), concepts, flower, 1).endswith('Français: "fleur" - Français: "')
    cloze = load_cloze(concepts)
    last = prompt(Task.of(TASKS[2]), concepts, flower, 1, cloze).split("\n")[-1]
    assert last == cloze[flower]["de"] + ' Deutsch: "' and '"___"' in last
    # The cloze sentences never give the word away, in any language.
    for concept, sentences in zip(concepts, cloze):
        for sentence in sentences.values():
            assert not any(word.casefold() in sentence.casefold() for word in concept.values()), (concept["en"], sentence)


def test_a_task_without_its_languages_is_refused_naming_the_key():
    with pytest.raises(UserError, match=r"words\.tasks: a translation task needs a source"):
        Task.of({"kind": "translation", "target": "de"})
    with pytest.raises(UserError, match=r"words\.tasks: a cloze task has one language"):
        Task.of({"kind": "cloze", "source": "fr", "target": "de"})


def test_a_cloze_file_out_of_step_with_the_word_list_is_refused(tmp_path):
    path = tmp_path / "cloze.tsv"
    path.write_text("en\tfr\tde\tes\tit\ndog\ta\tb\tc\td\n", encoding="utf-8")
    with pytest.raises(UserError, match="cloze.tsv: its en column"):
        load_cloze(load_words(), path)


# Log-probabilities closer than this to the token's are ties the batched forward (16 rows,
# padded) may order differently from the reference's single unpadded one (float32 rounding).
TIE = 1e-4


def ranks_around(logprobs: torch.Tensor, want: torch.Tensor) -> tuple[int, int]:
    """The token's rank counting near-ties (within TIE) as above it, and as below it."""
    return int((logprobs > want + TIE).sum()) + 1, int((logprobs > want - TIE).sum()) + 1


def test_the_logit_lens_records_are_an_independent_lens_on_each_prompt(smollm2, smollm2_words):
    """Every record of the logit lens equals plain transformers' hidden states through the final
    norm and unembedding, on the prompt alone (no batch, no padding)."""
    folder, model = smollm2
    part, rows = smollm2_words
    assert part["lenses"] == ["logit", "patchscope"]
    logit = [r for r in rows if r["lens"] == "logit"]
    assert len(logit) == 9 * (model.n_layers + 1)
    for task in part["tasks"]:
        for p in task["prompts"][:1]:  # plain transformers loads the model for each prompt
            layers, _, ids = reference_layers(folder, p["prompt"])
            assert ids == model.tokenizer(p["prompt"])["input_ids"]
            logprobs = torch.log_softmax(layers[:, -1], -1)
            mine = [r for r in logit if r["task"] == task["id"] and r["concept"] == p["concept"]]
            assert [r["layer"] for r in mine] == list(range(model.n_layers + 1))
            for r in mine:
                for role, token in p["token_ids"].items():
                    want = logprobs[r["layer"], token]
                    assert r[f"{role}_prob"] == pytest.approx(float(want.exp()), abs=2e-6, rel=1e-4)
                    assert ranks_around(logprobs[r["layer"]], want)[0] <= r[f"{role}_rank"] <= ranks_around(logprobs[r["layer"]], want)[1]
                assert r["top1_prob"] == pytest.approx(float(logprobs[r["layer"]].max().exp()), abs=2e-6, rel=1e-4)
                if task["kind"] != "translation":
                    assert r["source_prob"] == "" and r["source_rank"] == ""


def test_the_patchscope_records_are_the_hooked_forward_of_the_method(smollm2, smollm2_words):
    folder, model = smollm2
    part, rows = smollm2_words
    assert part["patchscope_layers"] == list(range(model.n_layers + 1))  # the placeholder is read: every layer
    inspection = model.tokenizer(INSPECTION_PROMPT)["input_ids"]
    p = part["tasks"][0]["prompts"][0]
    ids = model.tokenizer(p["prompt"])["input_ids"]
    residuals, _ = model.backend.capture(ids, "last")
    mine = {r["layer"]: r for r in rows if r["lens"] == "patchscope" and r["task"] == part["tasks"][0]["id"] and r["concept"] == p["concept"]}
    for layer in (0, 7, 15, model.n_layers):
        logprobs = torch.log_softmax(hooked_patchscope(model, inspection, residuals[layer, -1], layer, -1), -1)
        for role, token in p["token_ids"].items():
            assert mine[layer][f"{role}_prob"] == pytest.approx(float(logprobs[token].exp()), abs=1e-6, rel=1e-3), (layer, role)
            low, high = ranks_around(logprobs, logprobs[token])
            assert low <= mine[layer][f"{role}_rank"] <= high


def test_a_concepts_records_do_not_depend_on_which_other_concepts_are_kept(smollm2, smollm2_words):
    folder, model = smollm2
    _, three = smollm2_words
    _, two = run_words(session(model), settings(2, TASKS[:2]))
    kept = {(r["task"], r["concept"]) for r in two}
    assert [r for r in three if (r["task"], r["concept"]) in kept] == two


def write_outputs(tmp_path, curves: dict[str, dict[str, np.ndarray]], n_layers: int = 4, kind: str = "translation"):
    """A JSON and records of one task written by hand: ``curves[lens][role]`` [concepts, layers]."""
    tmp_path.mkdir(exist_ok=True)
    roles = ["target", "english"] + (["source"] if kind == "translation" else [])
    n = next(iter(next(iter(curves.values())).values())).shape[0]
    prompts = [{"concept": f"c{i}", "token_ids": {role: 10 * i + k for k, role in enumerate(roles)}} for i in range(n)]
    task_id = "translation-fr-de" if kind == "translation" else "repetition-de"
    summary = {"model": "m", "architecture": "a", "n_layers": n_layers, "d_model": 8, "dtype": "float32", "device": "cpu",
               "source": {"source": "local"}, "backend": "hooks", "lenses": list(curves), "patchscope_layers": list(range(n_layers + 1)),
               "identity_check": {"max_abs_prob_diff": 0.0},
               "words": {"scoring": "first", "demonstrations": 3}, "patchscope": {"prompt": "?", "position": -1, "target_layer": None},
               "tasks": [{"id": task_id, "kind": kind, "source": "fr", "target": "de",
                          "words": {"kept": n, "scored": n, "whole_words": 0}, "prompts": prompts}]}
    (tmp_path / "s.json").write_text(json.dumps(summary))
    with open(tmp_path / "r.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(RECORD_COLUMNS)
        for lens, by_role in curves.items():
            for i in range(n):
                for layer in range(n_layers + 1):
                    cells = {f"{role}_prob": float(by_role[role][i, layer]) for role in roles}
                    cells.update({f"{role}_rank": 1 for role in roles})
                    writer.writerow(["m", task_id, f"c{i}", lens, layer,
                                     *(cells.get(column, "") for column in RECORD_COLUMNS[5:11]), "x", 0.5])
    return model_facts(tmp_path / "s.json", tmp_path / "r.csv")


def test_the_rule_finds_the_concept_before_its_word_with_english_leading(tmp_path):
    """Ten concepts, four layers: English readable at layers 2-3, the German word only from layer 4."""
    rng = np.random.default_rng(1)
    noise = rng.uniform(0, 0.01, size=(10, 5))
    target = np.array([0.0, 0.0, 0.01, 0.02, 0.8]) + noise
    english = np.array([0.0, 0.0, 0.4, 0.5, 0.05]) + noise
    facts = write_outputs(tmp_path, {"logit": {"target": target, "english": english, "source": noise}})
    task = facts.tasks[0]
    reading = task.readings["logit"]
    # The interval, computed here with NumPy from the same draws the analysis makes.
    values = np.array(target)
    draws = np.random.default_rng([analysis.BOOTSTRAP_SEED, 0, *task.id.encode()]).integers(0, 10, size=(analysis.BOOTSTRAP_SAMPLES, 10))
    means = values[draws].mean(1)
    assert reading.curves["target"].low == pytest.approx(list(np.percentile(means, 2.5, axis=0)))
    assert reading.curves["target"].mean == pytest.approx(list(values.mean(0)))
    assert task.done and reading.word_layer == 4 and reading.concept_layer == 2
    assert reading.before_word() == [2, 3] and reading.english_dominant() == [2, 3]
    # Through a lens that never reads the target word, the concept is before it to the output.
    never = write_outputs(tmp_path / "never", {"logit": {"target": target, "english": english, "source": noise},
                                               "tuned": {"target": noise, "english": english, "source": noise}})
    assert never.tasks[0].readings["tuned"].word_layer is None and never.tasks[0].readings["tuned"].before_word() == [2, 3, 4]
    assert "translation-fr-de through the tuned lens at layers 2-4 of 4 (this lens never reads the target word)" in answer(never)
    text = answer(facts)
    assert ("translation-fr-de through the logit lens at layers 2-3 of 4 (target word from layer 4), English dominating at 2 layers "
            "of them, mostly its English word there (mean probability over those layers target-language 0.02, English 0.45, "
            "source-language 0.00; at layer 3, where the concept is likeliest: target-language 0.03 [0.02, 0.03], English 0.51 "
            "[0.50, 0.51], source-language 0.01 [0.00, 0.01])") in text
    assert "the latent-English pattern" in text


def test_a_task_the_model_does_not_do_is_not_read_as_a_latent_concept(tmp_path):
    """English at the output (the model answers in English): not a concept before its word."""
    noise = np.random.default_rng(2).uniform(0, 0.01, size=(10, 5))
    target = np.array([0.0, 0.0, 0.0, 0.01, 0.02]) + noise
    english = np.array([0.0, 0.0, 0.3, 0.5, 0.7]) + noise
    facts = write_outputs(tmp_path, {"logit": {"target": target, "english": english, "source": noise}})
    task = facts.tasks[0]
    assert not task.done and task.readings["logit"].before_word() == [2, 3, 4]  # the lens's; the task does not count
    text = answer(facts)
    assert "in 0 of 0 task-and-lens readings" in text and "translation-fr-de (target word at the output 0.02" in text
    assert "null result" in text
    assert "| translation-fr-de | no | logit | 2 | never | (task not done) | 2-4 |" in SINGLE["where the concept is readable"](facts)


def test_the_readable_threshold_is_on_the_intervals_lower_end(tmp_path):
    """A mean above the threshold with an interval reaching below it is not readable."""
    target = np.zeros((10, 5))
    target[:, 4] = 0.9
    target[0, 2] = 10 * READABLE * 1.5  # one concept carries the mean of layer 2 over the threshold
    facts = write_outputs(tmp_path, {"logit": {"target": target, "english": np.zeros((10, 5))}}, kind="repetition")
    curve = facts.tasks[0].readings["logit"].curves["target"]
    assert curve.mean[2] > READABLE and curve.low[2] < READABLE
    assert curve.readable() == [4]

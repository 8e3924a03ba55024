"""Experiment 005's run: every task's prompts through the model, and at the last position of
each, every layer read by the logit lens, the tuned lens (where trained) and the patchscope
lens: the probability and rank of the concept's word in the target language, in English and
in the source language.

Prompts of one padded length run together (``capture_batch``: forward passes of a fixed
number of rows), and every product of a head or translator runs on a fixed number of rows
(``rows_padded``): a concept's records are the same whatever else the word list keeps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any

import torch

from workflow.base.errors import UserError
from workflow.config.settings import LensSettings, PatchscopeSettings
from workflow.experiments.exp005.prompts import CLOZE, KINDS, Task, load_cloze, prompt
from workflow.experiments.exp005.records import RECORD_COLUMNS, ROLES
from workflow.experiments.exp005.words import WORDS, kept_words, load_words
from workflow.lens.job import OpenedTunedLens, Outputs, run_model_job
from workflow.lens.readout import rows_padded
from workflow.lens.session import LensSession, check_context, check_finite
from workflow.model.backends import FORWARD_ROWS, length_batches
from workflow.model.load import LoadedModel, ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WordsSettings:
    """Config key ``words`` (config/schema.yaml documents each)."""

    tasks: tuple[Task, ...]
    scoring: str = "first"
    max_words: int = 24
    demonstrations: int = 3

    @classmethod
    def from_config(cls, words: dict[str, Any]) -> WordsSettings:
        return cls(
            tasks=tuple(Task.of(entry) for entry in words["tasks"]),
            scoring=words.get("scoring", "first"),
            max_words=int(words.get("max_words", 24)),
            demonstrations=int(words.get("demonstrations", 3)),
        )

    def recorded(self) -> dict[str, Any]:
        return {
            "tasks": [task.id for task in self.tasks],
            "scoring": self.scoring,
            "max_words": self.max_words,
            "demonstrations": self.demonstrations,
        }


@dataclass
class Item:
    """One prompt: a task's kept concept, its tokens and where the lens reads it."""

    task: Task
    concept: str  # the English word: the concept's name in the records
    input_ids: list[int]
    tokens: dict[str, int]  # role -> the (first) token id scored
    whole: dict[str, bool]


def task_items(model: LoadedModel, settings: WordsSettings, word_files: tuple[str, str] = (str(WORDS), str(CLOZE))
               ) -> tuple[list[Item], list[dict[str, Any]]]:
    """Every task's prompts (its first ``max_words`` kept concepts of the word list and cloze
    sentences in ``word_files``), and per task what the JSON says of it: the word counts and
    the prompts."""
    concepts = load_words(word_files[0])
    cloze = load_cloze(concepts, word_files[1]) if any(task.kind == "cloze" for task in settings.tasks) else None
    tokenizer = model.tokenizer
    items, tasks = [], []
    for task in settings.tasks:
        kept = kept_words(tokenizer, concepts, task.source, task.target, scoring=settings.scoring)
        chosen = list(zip(kept.concepts, kept.tokens, kept.whole))[: settings.max_words]
        described = []
        for concept, tokens, whole in chosen:
            text = prompt(task, concepts, concepts.index(concept), settings.demonstrations, cloze)
            ids = [int(t) for t in tokenizer(text, add_special_tokens=True)["input_ids"]]
            check_context(model, {"id": f"{task.id}/{concept['en']}"}, len(ids), "its prompt")
            roles = {role: tokens[role] for role in ROLES if task.kind == "translation" or role != "source"}
            items.append(Item(task, concept["en"], ids, roles, whole))
            described.append({"concept": concept["en"], "words": {role: concept[lang] for role, lang in
                                                                 (("target", task.target), ("english", "en"), ("source", task.source)) if role in roles},
                              "token_ids": roles, "whole": {role: whole[role] for role in roles}, "prompt": text})
        tasks.append({"id": task.id, "kind": task.kind, "source": task.source, "target": task.target,
                      "words": {**kept.counts(), "scored": len(chosen), "whole_words": sum(all(w.values()) for _, _, w in chosen)},
                      "prompts": described})
    return items, tasks


def _readings(session: LensSession, hidden: torch.Tensor, layer: int, items: list[Item], translator) -> list[dict[str, Any]]:
    """One layer of a batch (``hidden`` [B, d]) through one lens: per item the probability and
    rank of each role's token and the lens's top-1."""
    if translator is not None:
        hidden = rows_padded(lambda h: translator(h, layer), hidden, FORWARD_ROWS)
    head = session.heads.lens
    out = []
    for start in range(0, hidden.shape[0], FORWARD_ROWS):
        chunk = items[start : start + FORWARD_ROWS]
        logprobs = torch.log_softmax(rows_padded(head.logits, hidden[start : start + FORWARD_ROWS]).float(), dim=-1)
        top_lp, top_id = logprobs.max(-1)
        for b, item in enumerate(chunk):
            row: dict[str, Any] = {"top1_token": session.names(int(top_id[b])), "top1_prob": float(top_lp[b].exp())}
            for role in ROLES:
                if role in item.tokens:
                    lp = logprobs[b, item.tokens[role]]
                    row[f"{role}_prob"] = float(lp.exp())
                    # Rank counts strictly larger log-probs, so ties share the better rank.
                    row[f"{role}_rank"] = int((logprobs[b] > lp).sum()) + 1
            out.append(row)
    return out


def last_residuals(session: LensSession, items: list[Item], batch_size: int) -> torch.Tensor:
    """Every item's residual at its last position, every layer [L+1, N, d]: prompts of one
    padded length through the model together, each checked finite and the lens at the last
    layer checked against the model's own logits."""
    model = session.model
    last: torch.Tensor | None = None
    started, done = time.perf_counter(), 0
    for length, indices in length_batches([len(item.input_ids) for item in items], batch_size):
        batch = [items[i] for i in indices]
        reads = [len(item.input_ids) - 1 for item in batch]
        residuals, model_logits = model.backend.capture_batch([item.input_ids for item in batch], length, reads, from_read=True)
        if last is None:  # the residuals' own dtype and device: the lenses read them as 001's do
            last = residuals.new_empty(model.n_layers + 1, len(items), model.d_model)
        for b, item in enumerate(batch):
            check_finite(model, {"id": f"{item.task.id}/{item.concept}"}, residuals[:, b, : len(item.input_ids)])
            last[:, indices[b]] = residuals[:, b, reads[b]]
        final = torch.stack([residuals[-1, b, read] for b, read in enumerate(reads)])
        session.check_identity(final, model_logits, [f"prompt {item.task.id}/{item.concept}" for item in batch])
        done += len(batch)
        log.info("model: prompts %d/%d (padded length %d) in %.1f s", done, len(items), length, time.perf_counter() - started)
    if last is None:
        raise UserError("experiment 005 kept no concept for any task: see the word counts (config key words.tasks)")
    return last


def run_words(session: LensSession, settings: WordsSettings, batch_size: int = 32,
              word_files: tuple[str, str] = (str(WORDS), str(CLOZE))) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every task's prompts read at every layer by every lens; (the JSON's part, records)."""
    model = session.model
    items, tasks = task_items(model, settings, word_files)
    if session.patchscope is None:
        raise ValueError("experiment 005 reads the patchscope lens: give the session its settings")
    lenses = [(lens.name, lens.tuned) for lens in session.lenses]
    n_layers = model.n_layers
    # A patchscope written before the position it reads sees nothing of the source where no
    # block runs after the write (the last layer, target layer None): no record there.
    patchscope_layers = [layer for layer in range(n_layers + 1) if session.patchscope.reads(layer)]
    last = last_residuals(session, items, batch_size)  # [L+1, N, d]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    # Item by item in record order: every lens's layers of FORWARD_ROWS prompts at a time.
    for start in range(0, len(items), FORWARD_ROWS):
        chunk = items[start : start + FORWARD_ROWS]
        found: list[list[dict[str, Any]]] = [[] for _ in chunk]
        for name, translator in lenses:
            for layer in patchscope_layers if name == "patchscope" else range(n_layers + 1):
                for b, reading in enumerate(_readings(session, last[layer, start : start + FORWARD_ROWS], layer, chunk, translator)):
                    found[b].append({"model": model.key, "task": chunk[b].task.id, "concept": chunk[b].concept, "lens": name,
                                     "layer": layer, **reading})
        rows += [row for item_rows in found for row in item_rows]
        log.info("lenses: prompts %d/%d in %.1f s", start + len(chunk), len(items), time.perf_counter() - started)
    return {"lenses": [name for name, _ in lenses], "patchscope_layers": patchscope_layers, "tasks": tasks,
            "identity_check": session.identity.recorded()}, [{column: row.get(column, "") for column in RECORD_COLUMNS} for row in rows]


# more than 6 parameters: the job's model, settings and outputs, and the files it reads
def write_words_outputs(model: ModelSpec, lens_settings: LensSettings, words: dict[str, Any], outputs: Outputs,
                        tuned_dir: str | None = None, batch_size: int = 32,
                        word_files: tuple[str, str] = (str(WORDS), str(CLOZE)),
                        patchscope: PatchscopeSettings = PatchscopeSettings()) -> dict[str, Any]:
    """Experiment 005 on ``model``: the JSON and records written together."""
    settings = WordsSettings.from_config(words)
    lens = replace(lens_settings, positions="last")

    def run(loaded: LoadedModel, tuned: OpenedTunedLens | None):
        session = LensSession(loaded, lens, tuned.lens if tuned else None, patchscope)
        part, rows = run_words(session, settings, batch_size, word_files)
        return {
            **({"tuned_lens": tuned.recorded("unembedding_sha256")} if tuned else {}),
            "lens": lens.recorded(),
            "words": {**settings.recorded(), "files": [Path(path).name for path in word_files], "kinds": list(KINDS)},
            "patchscope": patchscope.recorded(),
            **part,
        }, rows

    return run_model_job(model, lens, replace(outputs, columns=RECORD_COLUMNS, list_columns=()), run, tuned_dir)

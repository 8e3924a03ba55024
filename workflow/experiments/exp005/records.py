"""Experiment 005's records: their columns (the data contract) and reading them back,
checked against the JSON the same run wrote. Torch-free: the analysis, plots and
evaluations read them without loading the model code."""

from __future__ import annotations

from typing import Any

import pandas as pd

from workflow.base.errors import UserError
from workflow.lens.records import read_records

# The words scored at every layer: the concept's word in the target language, in English and
# in the source language (translation only: in repetition and cloze the source is the target).
ROLES = ("target", "english", "source")

# The records contract (docs/data-contract.md): extend, don't rename. One row per task x
# concept x lens x layer, at the prompt's last position (where the next token is the target
# word's first). ``{role}_prob``: the lens's probability of the role's (first) token;
# ``{role}_rank``: its rank, 1 = the lens's top-1 (ties share the better rank); both empty
# for the source role outside translation. ``top1_token``, ``top1_prob``: the lens's top-1.
RECORD_COLUMNS = (
    "model",
    "task",
    "concept",
    "lens",
    "layer",
    *(f"{role}_{measure}" for role in ROLES for measure in ("prob", "rank")),
    "top1_token",
    "top1_prob",
)
STRING_COLUMNS = ("model", "task", "concept", "lens", "top1_token")
VALUE_COLUMNS = (*(f"{role}_{measure}" for role in ROLES for measure in ("prob", "rank")), "top1_prob")


def expected_rows(summary: dict[str, Any]) -> int:
    """How many records the JSON's tasks make (each prompt: every lens's layers)."""
    prompts = sum(len(task["prompts"]) for task in summary["tasks"])
    per_prompt = sum(len(summary["patchscope_layers"]) if lens == "patchscope" else summary["n_layers"] + 1
                     for lens in summary["lenses"])
    return prompts * per_prompt


def read_word_records(records_path: str, summary: dict[str, Any]) -> pd.DataFrame:
    """The records file, checked against the JSON the same run wrote."""
    fix = ("run snakemake again (the file no longer matches its provenance record, so its job is planned again) "
           "or restore both files (git checkout results/)")
    try:
        frame = read_records(records_path, parse_lists=False, string_columns=STRING_COLUMNS, list_columns=())
        for column in VALUE_COLUMNS:
            frame[column] = pd.to_numeric(frame[column].replace("", float("nan")), errors="raise").astype(float)
    except (ValueError, TypeError, KeyError, pd.errors.ParserError) as error:
        raise UserError(f"{records_path}: cannot be read as experiment 005's records ({error}); {fix}") from None
    if tuple(frame.columns) != RECORD_COLUMNS:
        raise UserError(f"{records_path}: its columns are {list(frame.columns)}, not experiment 005's {list(RECORD_COLUMNS)}; {fix}")
    if len(frame) != expected_rows(summary):
        raise UserError(f"{records_path} has {len(frame)} rows, but its JSON describes {expected_rows(summary)}: damaged or from another run; {fix}")
    return frame

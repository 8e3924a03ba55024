"""Experiment 004's records: their columns (the data contract) and reading them back,
checked against the JSON the same run wrote. Torch-free: the analysis, plots and
evaluations read them without loading the model code."""

from __future__ import annotations

from typing import Any

import pandas as pd

from workflow.base.errors import UserError
from workflow.lens.records import read_records

# The tokens each component's direct logit attribution is read for: the clean answer, the
# model's most probable other token after the clean prompt, and the pair's corrupted answer.
TARGETS = ("answer", "competitor", "corrupted_answer")

# The records contract (docs/data-contract.md): extend, don't rename. One row per pair x
# block (``layer``, from 0) x component x position of the clean prompt. ``component``:
# ``attention``, ``mlp``, ``head{h}``, or ``attention_bias`` (what the attention's output
# projection adds whatever the heads, direct logit attribution only). ``exact``: the
# recovered fraction of the logit difference when the component's clean output is patched
# into the corrupted run at that position; ``atp``: attribution patching's estimate of it;
# ``grad_drop``: AtP*'s GradDrop magnitude. ``dla_*``: the component's direct contribution to
# each target's logit at the last position (empty at the other positions).
RECORD_COLUMNS = (
    "model",
    "pair",
    "layer",
    "component",
    "position",
    "token",
    "exact",
    "atp",
    "grad_drop",
    *(f"dla_{target}" for target in TARGETS),
)
STRING_COLUMNS = ("model", "pair", "component", "token")
# Measured columns, empty ("nan") where a measure does not apply (DLA away from the last
# position, exact patching switched off, the attention's bias in patching).
VALUE_COLUMNS = ("exact", "atp", "grad_drop", *(f"dla_{target}" for target in TARGETS))


def expected_rows(summary: dict[str, Any]) -> int:
    """How many records the JSON's pairs make (each: its components x its positions)."""
    return sum(int(p["components"]) * len(p["clean_input_ids"]) for p in summary["pairs"])


def read_component_records(records_path: str, summary: dict[str, Any]) -> pd.DataFrame:
    """The records file, checked against the JSON the same run wrote."""
    fix = ("run snakemake again (the file no longer matches its provenance record, so its job is planned again) "
           "or restore both files (git checkout results/)")
    try:
        frame = read_records(records_path, parse_lists=False, string_columns=STRING_COLUMNS, list_columns=())
        for column in VALUE_COLUMNS:
            if column in frame.columns:
                frame[column] = frame[column].map(float).astype(float)
    except (ValueError, TypeError, pd.errors.ParserError) as error:
        raise UserError(f"{records_path}: cannot be read as experiment 004's records ({error}); {fix}") from None
    if tuple(frame.columns) != RECORD_COLUMNS:
        raise UserError(f"{records_path}: its columns are {list(frame.columns)}, not experiment 004's {list(RECORD_COLUMNS)}; {fix}")
    if len(frame) != expected_rows(summary):
        raise UserError(f"{records_path} has {len(frame)} rows, but its JSON describes {expected_rows(summary)}: damaged or from another run; {fix}")
    return frame

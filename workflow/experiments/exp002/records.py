"""Experiment 002's records: their columns (the data contract) and reading them back,
checked against the JSON the same run wrote. Torch-free: the analysis, plots and
evaluations read them without loading the model code."""

from __future__ import annotations

from typing import Any

import pandas as pd

from workflow.base.errors import UserError
from workflow.lens.records import read_records

# The records contract (docs/data-contract.md, "Data contract"): extend, don't rename. ``token`` is the token at that
# position of the prompt the patched run reads; ``source_token`` that of the run the written
# residual comes from (the same token at positions where the prompts agree).
RECORD_COLUMNS = (
    "model",
    "pair",
    "direction",
    "layer",
    "position",
    "token",
    "logit_diff",
    "recovered",
    "corruption",
    "source_token",
)
STRING_COLUMNS = ("model", "pair", "direction", "token", "corruption", "source_token")


def sweep_tokens(corruption: str, direction: str, clean: list[str], corrupted: list[str]) -> tuple[list[str], list[str]]:
    """(the tokens the patched run reads, the tokens of the run its written residual comes
    from) of a sweep: denoise reads the corrupted prompt, noise and tracing the clean one."""
    if corruption == "prompt":
        return (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return clean, clean


def expected_rows(summary: dict[str, Any]) -> int:
    kinds = 3 if summary["patching"]["trace"]["samples"] > 0 else 2
    return sum(kinds * (int(summary["n_layers"]) + 1) * len(p["clean_input_ids"]) for p in summary["pairs"])


def read_patching_records(records_path: str, summary: dict[str, Any]) -> pd.DataFrame:
    """The records CSV, checked against the JSON the same run wrote."""
    fix = ("run snakemake again (the file no longer matches its provenance record, so its job is planned again) "
           "or restore both files (git checkout results/)")
    try:
        frame = read_records(records_path, parse_lists=False, string_columns=STRING_COLUMNS, list_columns=())
    except (ValueError, pd.errors.ParserError) as error:
        raise UserError(f"{records_path}: cannot be read as a patching records CSV ({error}); {fix}") from None
    if tuple(frame.columns) != RECORD_COLUMNS:
        raise UserError(f"{records_path}: its columns are {list(frame.columns)}, not experiment 002's {list(RECORD_COLUMNS)}; {fix}")
    if len(frame) != expected_rows(summary):
        raise UserError(f"{records_path} has {len(frame)} rows, but its JSON describes {expected_rows(summary)}: damaged or from another run; {fix}")
    return frame

"""Records CSVs, written and read the same way by every experiment. The lens records (one
row per probe x lens x layer x position, built by ``lens_row``; experiments 001 and 003
write them) have COLUMNS; other experiments give their own columns.

Column names are a data contract (docs/data-contract.md, "Data contract"); extend, don't rename. Tokens can
hold newlines, commas, quotes and any Unicode, so every field is quoted and the
file is UTF-8; ``read_records`` reads it back unchanged.

Numbers are written with SIGNIFICANT_DIGITS significant digits: the lens computes in
float32, whose rounding shows in the seventh digit and changes with the processor's
instruction set, so digits beyond those would record noise, not the model.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from workflow.base.atomic import atomic_paths, dumps_json
from workflow.base.errors import UserError

COLUMNS = (
    "model",
    "probe",
    "lens",
    "layer",
    "position",
    "input_token",
    "top1_token",
    "top1_prob",
    "topk_tokens",
    "topk_probs",
    "entropy",
    "answer_token",
    "answer_prob",
    "answer_rank",
    "kl_to_final",
)
LIST_COLUMNS = ("topk_tokens", "topk_probs")
SIGNIFICANT_DIGITS = 6


# more than 6 parameters: the record's columns, each a value of its own
def lens_row(model: str, probe: str, lens: str, stats, position: int, input_token: str, answer_token: str, names) -> dict[str, Any]:
    """One row of the lens records (COLUMNS): ``stats`` (``workflow.lens.readout.RowStats``) of one
    layer read at ``position``; ``names`` decodes the top-k token ids."""
    topk_tokens = [names(t) for t in stats.topk_ids]
    return {
        "model": model,
        "probe": probe,
        "lens": lens,
        "layer": stats.layer,
        "position": position,
        "input_token": input_token,
        "top1_token": topk_tokens[0],
        "top1_prob": stats.topk_probs[0],
        "topk_tokens": topk_tokens,
        "topk_probs": stats.topk_probs,
        "entropy": stats.entropy,
        "answer_token": answer_token,
        "answer_prob": stats.answer_prob,
        "answer_rank": stats.answer_rank,
        "kl_to_final": stats.kl_to_final,
    }


def in_record_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lens rows in the order the records file holds them: by lens, layer, position."""
    return sorted(rows, key=lambda r: (r["lens"], r["layer"], r["position"]))


def rounded(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """``value`` with every float in it (also inside lists and dicts) rounded to ``digits``
    significant digits; anything else unchanged."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    return value
STRING_COLUMNS = ("model", "probe", "lens", "input_token", "top1_token", "answer_token", "topk_tokens", "topk_probs")


def encode_row(row: Mapping[str, Any], columns: tuple[str, ...] = COLUMNS, list_columns: tuple[str, ...] = LIST_COLUMNS) -> list[Any]:
    """Order a record's fields by ``columns``, JSON-encoding the list columns."""
    missing = [c for c in columns if c not in row]
    if missing:
        raise KeyError(f"record lacks columns {missing}")
    values = [rounded(row[c]) for c in columns]
    return [json.dumps(v, ensure_ascii=False) if c in list_columns else v for c, v in zip(columns, values)]


def write_records(
    fh, rows: Iterable[Mapping[str, Any]], columns: tuple[str, ...] = COLUMNS, list_columns: tuple[str, ...] = LIST_COLUMNS
) -> int:
    """Write the header and ``rows`` to an open text file; return the row count."""
    writer = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow(encode_row(row, columns, list_columns))
        count += 1
    return count


# Experiment 001's records file: CSV for small probe sets, Parquet beyond this many probes
# (lens.records_format: auto): large sets write and read back faster as Parquet, in less
# space (bench/records_scale.py; bench/README.md).
AUTO_PARQUET_ABOVE = 1000


def records_format(setting: str, n_probes: int) -> str:
    """csv or parquet: ``setting`` (lens.records_format), with auto resolved by the set's size."""
    if setting != "auto":
        return setting
    return "parquet" if n_probes > AUTO_PARQUET_ABOVE else "csv"


def _rounded_array(values) -> np.ndarray:
    """float64 values rounded to SIGNIFICANT_DIGITS significant digits exactly as ``rounded``
    does ('%.6g', correctly rounded), for a whole column at once."""
    return np.char.mod(f"%.{SIGNIFICANT_DIGITS}g", np.asarray(values, dtype=np.float64)).astype(np.float64)


def write_records_parquet(
    path, rows: list[Mapping[str, Any]], columns: tuple[str, ...] = COLUMNS, list_columns: tuple[str, ...] = LIST_COLUMNS
) -> int:
    """Write ``rows`` as a Parquet file (zstd): the same columns and rounded values as the
    CSV, list columns as Parquet lists. Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise KeyError(f"record lacks columns {missing}")
    arrays = {}
    for column in columns:
        values = [row[column] for row in rows]
        if column in list_columns:
            lengths = np.array([len(v) for v in values], dtype=np.int32)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            flat = [x for v in values for x in v]
            if flat and isinstance(flat[0], float):
                inner = pa.array(_rounded_array(flat))
            else:
                inner = pa.array(flat, type=pa.string())
            arrays[column] = pa.ListArray.from_arrays(offsets, inner)
        elif values and isinstance(values[0], float):
            arrays[column] = pa.array(_rounded_array(values))
        else:
            arrays[column] = pa.array(values)
    pq.write_table(pa.table(arrays), path, compression="zstd")
    return len(rows)


def write_records_file(
    path, rows: list[Mapping[str, Any]], fmt: str = "csv", columns: tuple[str, ...] = COLUMNS, list_columns: tuple[str, ...] = LIST_COLUMNS
) -> int:
    """Write a records file in ``fmt`` (csv or parquet); return the row count."""
    if fmt == "parquet":
        return write_records_parquet(path, rows, columns, list_columns)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        return write_records(fh, rows, columns, list_columns)


def write_outputs(
    summary_path, records_path, document: dict[str, Any], rows: list[Mapping[str, Any]],
    columns: tuple[str, ...] = COLUMNS, list_columns: tuple[str, ...] = LIST_COLUMNS,
) -> int:
    """An experiment's two outputs for one model: its JSON ``document`` (numbers rounded)
    and its records file (Parquet where ``records_path`` ends in .parquet, else CSV), both
    or neither (``workflow.base.atomic.atomic_paths``). Returns the row count."""

    fmt = "parquet" if str(records_path).endswith(".parquet") else "csv"
    with atomic_paths(summary_path, records_path) as (summary_tmp, records_tmp):
        summary_tmp.write_text(dumps_json(rounded(document)), encoding="utf-8")
        return write_records_file(records_tmp, rows, fmt, columns, list_columns)


def read_records(
    path: str | os.PathLike[str],
    parse_lists: bool = True,
    string_columns: tuple[str, ...] = STRING_COLUMNS,
    list_columns: tuple[str, ...] = LIST_COLUMNS,
) -> pd.DataFrame:
    """Read a records file (CSV, or Parquet by its suffix) with pandas, keeping token
    strings exactly as written; list columns as Python lists."""
    if str(path).endswith(".parquet"):
        frame = pd.read_parquet(path)
        for column in list_columns if parse_lists else ():
            frame[column] = frame[column].map(list)
        return frame
    frame = pd.read_csv(
        path,
        dtype={c: str for c in string_columns},
        keep_default_na=False,
        na_values=[],
        encoding="utf-8",
    )
    if parse_lists:
        for column in list_columns:
            frame[column] = frame[column].map(json.loads)
    return frame


def load_checked(records_path: str | os.PathLike[str], summary_path: str | os.PathLike[str]) -> pd.DataFrame:
    """A records CSV, after checking it against the JSON the same lens run wrote.

    The columns must be COLUMNS and the rows one per probe x lens x layer x position that
    the JSON describes; otherwise the file is damaged or from another run, and nothing
    should be drawn or written from it.
    """

    summary = json.loads(open(summary_path, encoding="utf-8").read())
    fix = ("run snakemake again (the file no longer matches its provenance record, so its job is planned again) "
           "or restore both files (git checkout results/)")
    try:
        frame = read_records(records_path)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise UserError(f"{records_path}: cannot be read as a records CSV ({error}); {fix}") from None
    if tuple(frame.columns) != COLUMNS:
        raise UserError(f"{records_path}: its columns are {list(frame.columns)}, not the records contract's {list(COLUMNS)}; {fix}")
    lenses = len(summary.get("lenses", ["logit"]))
    per_probe = 1 if summary.get("lens", {}).get("positions") == "last" else None
    expected = sum(lenses * (int(summary["n_layers"]) + 1) * (per_probe or len(p["input_ids"])) for p in summary["probes"])
    if len(frame) != expected:
        raise UserError(
            f"{records_path} has {len(frame)} rows, but {summary_path} describes {expected} (probes x lenses x layers x "
            f"positions): the file is damaged or from another run; {fix}"
        )
    return frame

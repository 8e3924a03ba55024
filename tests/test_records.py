"""The records CSV survives tokens that break naive CSV writers."""

import io

import pandas as pd

from workflow.lens.records import COLUMNS, read_records, write_records

AWKWARD = ["line\nbreak", "comma, here", 'a "quote"', "Ünïcödé 東京", "", "nan", "NULL", "  spaces  ", "\r\n", "tab\there"]


def row(i, token):
    return {
        "model": "m",
        "probe": "p",
        "lens": "logit",
        "layer": i,
        "position": 0,
        "input_token": token,
        "top1_token": token,
        "top1_prob": 0.5,
        "topk_tokens": [token, "x"],
        "topk_probs": [0.5, 0.25],
        "entropy": 1.25,
        "answer_token": token,
        "answer_prob": 1e-9,
        "answer_rank": 3,
        "kl_to_final": 0.0,
    }


def test_awkward_tokens_read_back_identically(tmp_path):
    rows = [row(i, t) for i, t in enumerate(AWKWARD)]
    path = tmp_path / "records.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        assert write_records(fh, rows) == len(rows)
    frame = read_records(path)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["input_token"].tolist() == AWKWARD
    assert frame["top1_token"].tolist() == AWKWARD
    assert frame["topk_tokens"].tolist() == [[t, "x"] for t in AWKWARD]
    assert frame["answer_prob"].tolist() == [1e-9] * len(AWKWARD)
    assert frame["answer_rank"].dtype.kind == "i"
    # Plain pandas (no helper) reads the same strings too.
    plain = pd.read_csv(path, keep_default_na=False, dtype={"input_token": str})
    assert plain["input_token"].tolist() == AWKWARD


def test_missing_column_is_refused():
    bad = row(0, "x")
    del bad["entropy"]
    try:
        write_records(io.StringIO(), [bad])
    except KeyError as error:
        assert "entropy" in str(error)
    else:
        raise AssertionError("a record without entropy was written")


def test_parquet_records_read_back_as_the_csv_does(tmp_path):
    """The same rows through both formats: equal frames, values rounded the same way."""
    from workflow.lens.records import records_format, write_records_file

    rows = [row(i, t) for i, t in enumerate(AWKWARD)]
    rows[1]["top1_prob"] = 0.123456789  # rounded to 6 significant digits in both
    rows[2]["topk_probs"] = [0.987654321, 1 / 3]
    for fmt in ("csv", "parquet"):
        assert write_records_file(tmp_path / f"r.{fmt}", rows, fmt) == len(rows)
    csv_frame, parquet_frame = read_records(tmp_path / "r.csv"), read_records(tmp_path / "r.parquet")
    pd.testing.assert_frame_equal(csv_frame, parquet_frame, check_dtype=False)
    assert parquet_frame["top1_prob"][1] == 0.123457 and parquet_frame["topk_probs"][2] == [0.987654, 0.333333]
    assert records_format("auto", 1000) == "csv" and records_format("auto", 1001) == "parquet"
    assert records_format("csv", 10**6) == "csv"

"""The records CSV survives tokens that break naive CSV writers."""

import io

import pandas as pd

from workflow.records import COLUMNS, read_records, write_records

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

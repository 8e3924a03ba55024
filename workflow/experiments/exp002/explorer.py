"""Experiment 002's explorer page (``workflow/report/explorer.py`` renders it): what it shows of the patching records."""

from __future__ import annotations

from typing import Any

from workflow.report.explorer import grid_of, json_number, TokenTable
from workflow.report.numbering import LAYER_LABEL


def patching_page_data(summary: dict[str, Any], records) -> dict[str, Any]:
    """What experiment 002's page shows: per pair, one grid per sweep (direction and
    corruption) of the recovered fraction, with the logit difference and both tokens."""
    tokens = TokenTable()
    by_pair = {pair: rows for pair, rows in records.groupby("pair", sort=False)}
    out = []
    for pair in summary["pairs"]:
        if pair["id"] not in by_pair:
            continue
        rows = by_pair[pair["id"]]
        sweeps = []
        for (direction, corruption), sweep in rows.groupby(["direction", "corruption"], sort=False):
            grid = grid_of(sweep, tokens, ["recovered", "logit_diff"])
            first = sweep.set_index(["layer", "position"]).loc[grid["layers"][0]]
            cells = grid.pop("cells")
            sweeps.append({
                "direction": direction,
                "corruption": corruption,
                **grid,
                "sources": [tokens(first.loc[p, "source_token"]) for p in grid["positions"]],
                "cells": cells,
            })
        out.append({
            "id": pair["id"],
            "clean_prompt": pair["clean_prompt"],
            "corrupted_prompt": pair["corrupted_prompt"],
            "clean_answer": pair["clean_answer_token"],
            "corrupted_answer": pair["corrupted_answer_token"],
            "logit_diff_clean": json_number(pair["logit_diff_clean"]),
            "logit_diff_corrupted": json_number(pair["logit_diff_corrupted"]),
            "sweeps": sweeps,
        })
    return {
        "kind": "patching",
        "experiment": "002",
        "unit": "layer",
        "unit_label": LAYER_LABEL,
        "model": summary.get("model") or str(records["model"].iloc[0]),
        "n_layers": int(summary.get("n_layers", records["layer"].max())),
        "pairs": out,
        "skipped": [{"id": s["id"], "reason": s["reason"]} for s in summary.get("skipped_pairs", [])],
        "tokens": tokens.table,
    }

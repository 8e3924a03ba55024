"""Experiment 004's explorer page (``workflow/report/explorer.py`` renders it): what it shows of the component records."""

from __future__ import annotations

from typing import Any

from workflow.report.explorer import grid_of, json_number, TokenTable
from workflow.report.numbering import BLOCK_LABEL


def components_page_data(summary: dict[str, Any], records) -> dict[str, Any]:
    """What experiment 004's page shows: per pair, one grid per component (attention, MLP,
    each head; the attention's bias has no patching and is left out) of [exact, AtP,
    GradDrop, direct logit attribution to the answer, the competitor, the corrupted answer],
    and the targets' probabilities through the lens after each block's attention and MLP."""
    tokens = TokenTable()
    by_pair = {pair: rows for pair, rows in records.groupby("pair", sort=False)}
    measures = ["exact", "atp", "grad_drop", "dla_answer", "dla_competitor", "dla_corrupted_answer"]
    out = []
    for pair in summary["pairs"]:
        if pair["id"] not in by_pair:
            continue
        rows = by_pair[pair["id"]]
        views = []
        for component, part in rows.groupby("component", sort=False):
            if component == "attention_bias":
                continue
            views.append({"component": component, **grid_of(part, tokens, measures)})
        targets = {
            name: {
                "token": target["token"],
                **{key: [json_number(v) for v in target[key]] for key in ("mid_prob", "post_prob", "mid_rank", "post_rank")},
            }
            for name, target in pair["targets"].items()
        }
        out.append({
            "id": pair["id"],
            "clean_prompt": pair["clean_prompt"],
            "corrupted_prompt": pair["corrupted_prompt"],
            "clean_answer": pair["clean_answer"],
            "corrupted_answer": pair["corrupted_answer"],
            "logit_diff_clean": json_number(pair["logit_diff_clean"]),
            "logit_diff_corrupted": json_number(pair["logit_diff_corrupted"]),
            "targets": targets,
            "sweeps": views,
        })
    return {
        "kind": "components",
        "experiment": "004",
        # The component records count blocks (their ``layer`` column), not 001's layers.
        "unit": "block",
        "unit_label": BLOCK_LABEL,
        "model": summary.get("model") or str(records["model"].iloc[0]),
        "n_layers": int(summary.get("n_layers", records["layer"].max() + 1)),
        "heads_exposed": bool(summary.get("heads", {}).get("exposed", False)),
        "exact_run": bool(summary.get("components", {}).get("exact", True)),
        "pairs": out,
        "skipped": [{"id": s["id"], "reason": s["reason"]} for s in summary.get("skipped_pairs", [])],
        "tokens": tokens.table,
    }

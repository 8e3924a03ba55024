"""Experiment 005's explorer page (``workflow/report/explorer.py`` renders it): per task, a
layers x concepts grid per lens."""

from __future__ import annotations

from typing import Any

from workflow.experiments.exp005.records import ROLES
from workflow.report.explorer import TokenTable, json_number
from workflow.report.numbering import LAYER_LABEL

# What one cell holds, in explorer.js's order (its WORD table).
CELL = ("top1_token", "top1_prob", *(f"{role}_prob" for role in ROLES), *(f"{role}_rank" for role in ROLES))


def words_page_data(summary: dict[str, Any], records, tasks: list[str] | None = None) -> dict[str, Any]:
    """What experiment 005's page shows: for every task (or those in ``tasks``), its concepts
    as columns, every layer as a row, per lens the top-1 and the three words' probabilities
    and ranks; a layer a lens has no record of (the patchscope's last, where it reads nothing)
    is an empty row."""
    tokens = TokenTable()
    lenses = [lens for lens in summary["lenses"] if lens in set(records["lens"])]
    layers = list(range(int(summary["n_layers"]) + 1))
    by_task = {task: rows for task, rows in records.groupby("task", sort=False)}
    out = []
    for task in summary["tasks"]:
        if (tasks is not None and task["id"] not in tasks) or task["id"] not in by_task or not task["prompts"]:
            continue
        concepts = [p["concept"] for p in task["prompts"]]
        grids = {lens: rows.set_index(["layer", "concept"]) for lens, rows in by_task[task["id"]].groupby("lens", sort=False)}
        cells = {}
        for lens in lenses:
            grid = grids[lens]
            cells[lens] = [[_cell(grid, layer, concept, tokens) for concept in concepts] for layer in layers]
        languages = f"{task['source']} -> {task['target']}" if task["kind"] == "translation" else task["target"]
        out.append({
            "id": task["id"],
            "description": f"{task['kind']} ({languages}), {len(concepts)} concepts",
            "prompt": task["prompts"][-1]["prompt"],
            "layers": layers,
            "positions": list(range(len(concepts))),
            "inputs": [tokens(concept) for concept in concepts],
            "words": [[tokens(p["words"][role]) if role in p["words"] else None for role in ROLES] for p in task["prompts"]],
            "cells": cells,
        })
    return {
        "kind": "words",
        "experiment": "005",
        "unit": "layer",
        "unit_label": LAYER_LABEL,
        "model": summary["model"],
        "n_layers": int(summary["n_layers"]),
        "lenses": lenses,
        "tasks": out,
        "tasks_total": len(summary["tasks"]),
        "tokens": tokens.table,
    }


def _cell(grid, layer: int, concept: str, tokens: TokenTable) -> list[Any]:
    if (layer, concept) not in grid.index:
        return [None] * len(CELL)
    row = grid.loc[(layer, concept)]
    return [tokens(row["top1_token"]), *(json_number(row[column]) for column in CELL[1:])]

"""The interactive explorer: one self-contained HTML page per experiment and model.

Experiments 001 and 003 (the lens records): per probe, the layers x positions grid of the
top-1 token coloured by its probability, a toggle between the lenses the run recorded, the
top-k tokens with their probabilities for the cell under the pointer or clicked, and the
answer's probability and rank across layers at the chosen position. Experiment 002 (the
patching records): per pair and sweep, the layers x positions grid of the recovered
fraction, and the recovered fraction across layers at the chosen position. Experiment 004
(the component records): per pair and component (attention, MLP, each head), the layers x
positions grid of the recovered fraction by exact patching or by attribution patching, the
chosen cell's exact, AtP and GradDrop values and direct logit attributions, the two measures
across layers at the chosen position, and the lens after attention and after the MLP.

The page is the records themselves (the values as the records file holds them, in a JSON
block) and a small script and style sheet (``workflow/report/explorer.js`` and
``explorer.css``, read as code by the rule's code version): no server, no network, no
library; it opens from disk and inside the Snakemake report. Same records, same bytes.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from workflow.base.atomic import write_text
from workflow.base.errors import UserError
from workflow.evaluation.experiment import experiment
from workflow.report.numbering import LAYER_LABEL

ASSETS = Path(__file__).resolve().parent  # the page's script and style beside this module
SCRIPT = ASSETS / "explorer.js"
STYLE = ASSETS / "explorer.css"


def json_number(value: Any) -> float | int | None:
    """A record's number as JSON can hold it (NaN, where a value is undefined, as null)."""
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return None
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


class TokenTable:
    """Token strings, each stored once in the page; cells refer to them by index."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.table: list[str] = []

    def __call__(self, token: str) -> int:
        if token not in self.index:
            self.index[token] = len(self.table)
            self.table.append(token)
        return self.index[token]


def lens_page_data(experiment: str, summary: dict[str, Any], records, probes: list[str] | None = None) -> dict[str, Any]:
    """What the page of experiment 001 or 003 shows: ``records`` (the lens records, a
    DataFrame) of the probes ``probes`` (all of the summary's when None), in its order."""
    tokens = TokenTable()
    described = {p["id"]: p for p in summary["probes"]}
    order = [p["id"] for p in summary["probes"]] if probes is None else list(probes)
    # The pipeline's summaries name their lenses; an API frame's holds the lenses in its rows.
    lenses = [lens for lens in summary.get("lenses", ["logit", "tuned"]) if lens in set(records["lens"])]
    by_probe = {probe: rows for probe, rows in records.groupby("probe", sort=False)}
    out = []
    for probe in order:
        if probe not in by_probe:
            continue
        rows = by_probe[probe].sort_values(["lens", "layer", "position"], kind="stable")
        layers = sorted(int(v) for v in rows["layer"].unique())
        positions = sorted(int(v) for v in rows["position"].unique())
        first = rows[(rows["lens"] == lenses[0]) & (rows["layer"] == layers[0])].set_index("position")
        cells = {}
        for lens in lenses:
            grid = rows[rows["lens"] == lens].set_index(["layer", "position"])
            cells[lens] = [
                [_cell(grid.loc[(layer, position)], tokens) for position in positions]
                for layer in layers
            ]
        entry = described.get(probe, {})
        out.append({
            "id": probe,
            "prompt": entry.get("prompt", ""),
            "layers": layers,
            "positions": positions,
            "inputs": [tokens(first.loc[position, "input_token"]) for position in positions],
            "answers": [tokens(first.loc[position, "answer_token"]) for position in positions],
            "cells": cells,
        })
    return {
        "kind": "lens",
        "experiment": experiment,
        "unit": "layer",
        "unit_label": LAYER_LABEL,
        "model": summary.get("model") or str(records["model"].iloc[0]),
        "n_layers": int(summary.get("n_layers", records["layer"].max())),
        "lenses": lenses,
        "probes": out,
        "probes_total": len(summary["probes"]),
        "tokens": tokens.table,
    }


def _cell(row, tokens: TokenTable) -> list[Any]:
    """One cell: [top-1, top-1 probability, entropy, answer probability, answer rank, KL to
    the final layer, top-k tokens, their probabilities] (explorer.js reads this order)."""
    return [
        tokens(row["top1_token"]),
        json_number(row["top1_prob"]),
        json_number(row["entropy"]),
        json_number(row["answer_prob"]),
        json_number(row["answer_rank"]),
        json_number(row["kl_to_final"]),
        [tokens(t) for t in row["topk_tokens"]],
        [json_number(p) for p in row["topk_probs"]],
    ]


def grid_of(rows, tokens: TokenTable, columns: list[str]) -> dict[str, Any]:
    """One layers x positions grid of ``rows`` (a frame with ``layer``, ``position`` and
    ``token``): its layers, positions, the token at each position, and per cell ``columns``'
    values (explorer.js reads them in that order)."""
    layers = sorted(int(v) for v in rows["layer"].unique())
    positions = sorted(int(v) for v in rows["position"].unique())
    grid = rows.set_index(["layer", "position"])
    first = grid.loc[layers[0]]
    return {
        "layers": layers,
        "positions": positions,
        "tokens": [tokens(first.loc[p, "token"]) for p in positions],
        "cells": [[[json_number(grid.loc[(layer, p), c]) for c in columns] for p in positions] for layer in layers],
    }


def render(data: dict[str, Any]) -> str:
    """The page: the data as JSON, the script and the style inlined."""
    title = f"Experiment {data['experiment']} ({experiment(data['experiment']).name}) · {data['model']} · explorer"
    # "<" escaped inside JSON, so no token can close the script element.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{STYLE.read_text(encoding='utf-8')}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        "<noscript>This page needs JavaScript to show the records.</noscript>\n"
        "<div id=\"app\"></div>\n"
        f"<script type=\"application/json\" id=\"explorer-data\">{payload}</script>\n"
        f"<script>\n{SCRIPT.read_text(encoding='utf-8')}</script>\n</body>\n</html>\n"
    )


def write_explorer(
    experiment_id: str,
    summary_path: str | os.PathLike[str],
    records_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    probes: list[str] | None = None,
) -> dict[str, Any]:
    """Read an experiment's records (as the experiment's plots read them, checked against its
    JSON) and write its explorer page to ``output``; returns the page's data. What the page
    shows is the experiment's own (``Experiment.explorer``)."""
    summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    page = experiment(experiment_id).explorer
    if page is None:
        raise UserError(f"experiment {experiment_id} has no explorer page")
    data = page.data(summary, page.read(str(records_path), str(summary_path), summary), probes)
    write_text(output, render(data))
    return data

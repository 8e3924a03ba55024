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

ASSETS = Path(__file__).resolve().parent  # the page's script and style beside this module
SCRIPT = ASSETS / "explorer.js"
STYLE = ASSETS / "explorer.css"


def _number(value: Any) -> float | int | None:
    """A record's number as JSON can hold it (NaN, where a value is undefined, as null)."""
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return None
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


class _Tokens:
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
    tokens = _Tokens()
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
        "model": summary.get("model") or str(records["model"].iloc[0]),
        "n_layers": int(summary.get("n_layers", records["layer"].max())),
        "lenses": lenses,
        "probes": out,
        "probes_total": len(summary["probes"]),
        "tokens": tokens.table,
    }


def _cell(row, tokens: _Tokens) -> list[Any]:
    """One cell: [top-1, top-1 probability, entropy, answer probability, answer rank, KL to
    the final layer, top-k tokens, their probabilities] (explorer.js reads this order)."""
    return [
        tokens(row["top1_token"]),
        _number(row["top1_prob"]),
        _number(row["entropy"]),
        _number(row["answer_prob"]),
        _number(row["answer_rank"]),
        _number(row["kl_to_final"]),
        [tokens(t) for t in row["topk_tokens"]],
        [_number(p) for p in row["topk_probs"]],
    ]


def _grid(rows, tokens: _Tokens, columns: list[str]) -> dict[str, Any]:
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
        "cells": [[[_number(grid.loc[(layer, p), c]) for c in columns] for p in positions] for layer in layers],
    }


def patching_page_data(summary: dict[str, Any], records) -> dict[str, Any]:
    """What experiment 002's page shows: per pair, one grid per sweep (direction and
    corruption) of the recovered fraction, with the logit difference and both tokens."""
    tokens = _Tokens()
    by_pair = {pair: rows for pair, rows in records.groupby("pair", sort=False)}
    out = []
    for pair in summary["pairs"]:
        if pair["id"] not in by_pair:
            continue
        rows = by_pair[pair["id"]]
        sweeps = []
        for (direction, corruption), sweep in rows.groupby(["direction", "corruption"], sort=False):
            grid = _grid(sweep, tokens, ["recovered", "logit_diff"])
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
            "logit_diff_clean": _number(pair["logit_diff_clean"]),
            "logit_diff_corrupted": _number(pair["logit_diff_corrupted"]),
            "sweeps": sweeps,
        })
    return {
        "kind": "patching",
        "experiment": "002",
        "model": summary.get("model") or str(records["model"].iloc[0]),
        "n_layers": int(summary.get("n_layers", records["layer"].max())),
        "pairs": out,
        "skipped": [{"id": s["id"], "reason": s["reason"]} for s in summary.get("skipped_pairs", [])],
        "tokens": tokens.table,
    }


def components_page_data(summary: dict[str, Any], records) -> dict[str, Any]:
    """What experiment 004's page shows: per pair, one grid per component (attention, MLP,
    each head; the attention's bias has no patching and is left out) of [exact, AtP,
    GradDrop, direct logit attribution to the answer, the competitor, the corrupted answer],
    and the targets' probabilities through the lens after each block's attention and MLP."""
    tokens = _Tokens()
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
            views.append({"component": component, **_grid(part, tokens, measures)})
        targets = {
            name: {
                "token": target["token"],
                **{key: [_number(v) for v in target[key]] for key in ("mid_prob", "post_prob", "mid_rank", "post_rank")},
            }
            for name, target in pair["targets"].items()
        }
        out.append({
            "id": pair["id"],
            "clean_prompt": pair["clean_prompt"],
            "corrupted_prompt": pair["corrupted_prompt"],
            "clean_answer": pair["clean_answer"],
            "corrupted_answer": pair["corrupted_answer"],
            "logit_diff_clean": _number(pair["logit_diff_clean"]),
            "logit_diff_corrupted": _number(pair["logit_diff_corrupted"]),
            "targets": targets,
            "sweeps": views,
        })
    return {
        "kind": "components",
        "experiment": "004",
        "model": summary.get("model") or str(records["model"].iloc[0]),
        "n_layers": int(summary.get("n_layers", records["layer"].max() + 1)),
        "heads_exposed": bool(summary.get("heads", {}).get("exposed", False)),
        "exact_run": bool(summary.get("components", {}).get("exact", True)),
        "pairs": out,
        "skipped": [{"id": s["id"], "reason": s["reason"]} for s in summary.get("skipped_pairs", [])],
        "tokens": tokens.table,
    }


TITLES = {
    "001": "layers and logits",
    "002": "activation patching",
    "003": "generation",
    "004": "components",
}


def render(data: dict[str, Any]) -> str:
    """The page: the data as JSON, the script and the style inlined."""
    title = f"Experiment {data['experiment']} ({TITLES.get(data['experiment'], '')}) · {data['model']} · explorer"
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


def page_data(experiment: str, summary: dict[str, Any], records, probes: list[str] | None = None) -> dict[str, Any]:
    """What the page of ``experiment`` shows of ``records`` (a DataFrame of its records)."""
    if experiment == "002":
        return patching_page_data(summary, records)
    if experiment == "004":
        return components_page_data(summary, records)
    return lens_page_data(experiment, summary, records, probes)


def write_explorer(
    experiment: str,
    summary_path: str | os.PathLike[str],
    records_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    probes: list[str] | None = None,
) -> dict[str, Any]:
    """Read an experiment's records (checked against its JSON, as its plots read them) and
    write its explorer page to ``output``; returns the page's data."""
    summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    if experiment == "002":
        from workflow.experiments.exp002.records import read_patching_records  # pandas: only when records are read

        records = read_patching_records(str(records_path), summary)
    elif experiment == "004":
        from workflow.experiments.exp004.records import read_component_records  # pandas: only when records are read

        records = read_component_records(str(records_path), summary)
    elif experiment == "001":
        from workflow.lens.records import load_checked  # pandas: only when records are read

        records = load_checked(records_path, summary_path)
    else:
        from workflow.lens.records import read_records  # pandas: only when records are read

        records = read_records(records_path)
    data = page_data(experiment, summary, records, probes)
    write_text(output, render(data))
    return data

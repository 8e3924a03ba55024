"""A stand-in for ``workflow.api.load`` whose models answer from the committed results: the
example notebook's code run on results/001 and results/002 in seconds, without a model, to
check that the notebook's committed outputs are what its code makes of those results
(tests/test_api.py). ``install()`` in the notebook's kernel, before its first cell."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from workflow import api
from workflow.experiments.exp002.records import read_patching_records
from workflow.config.probes import slug
from workflow.lens.records import read_records

REPO = Path(__file__).resolve().parents[1]


class CommittedModel:
    """A model key's committed results, served as ``Model.lens`` and ``Model.patch`` serve
    what they compute (the API's probe and pair ids)."""

    def __init__(self, key: str):
        self.key = key
        self.summary = json.loads((REPO / "results" / "001" / f"output-{key}.json").read_text(encoding="utf-8"))

    @property
    def n_layers(self) -> int:
        return self.summary["n_layers"]

    def lens(self, prompt: str, answer: str) -> pd.DataFrame:
        probe = next(p for p in self.summary["probes"] if (p["prompt"], p["answer"]) == (prompt, answer))
        records = read_records(REPO / "results" / "001" / f"output-{self.key}-records.csv")
        frame = records[records["probe"] == probe["id"]].reset_index(drop=True).assign(probe=slug(prompt)[:40])
        frame.attrs["summary"] = {**self.summary, "probes": [{**probe, "id": slug(prompt)[:40]}]}
        frame.attrs["experiment"] = "001"
        return frame

    def patch(self, clean: str, clean_answer: str, corrupted: str, corrupted_answer: str, *, pair_id: str = "pair") -> pd.DataFrame:
        summary = json.loads((REPO / "results" / "002" / f"output-{self.key}.json").read_text(encoding="utf-8"))
        pair = next(p for p in summary["pairs"] if (p["clean_prompt"], p["clean_answer"], p["corrupted_prompt"], p["corrupted_answer"])
                    == (clean, clean_answer, corrupted, corrupted_answer))
        records = read_patching_records(str(REPO / "results" / "002" / f"output-{self.key}-records.csv"), summary)
        frame = records[records["pair"] == pair["id"]].reset_index(drop=True).assign(pair=pair_id)
        frame.attrs["summary"] = {**summary, "pairs": [{**pair, "id": pair_id}]}
        frame.attrs["experiment"] = "002"
        return frame


def install() -> None:
    api.load = lambda key, **settings: CommittedModel(key)

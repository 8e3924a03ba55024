"""What every experiment's summary JSON says of its model, read once: each experiment's
``ModelFacts`` (its ``analysis.py``) extends ``ModelDescription`` with its own findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ModelDescription:
    model: str
    architecture: str
    n_layers: int
    d_model: int
    dtype: str
    device: str
    source: dict[str, Any]  # the config entry's identifying fields (evaluation.text.source_text)
    backend: str

    @staticmethod
    def read(summary: dict[str, Any]) -> dict[str, Any]:
        """The description's fields from a summary JSON, to build an experiment's facts with."""
        return {
            "model": summary["model"], "architecture": summary["architecture"], "n_layers": int(summary["n_layers"]),
            "d_model": int(summary["d_model"]), "dtype": summary["dtype"], "device": summary["device"],
            "source": summary["source"], "backend": summary["backend"],
        }

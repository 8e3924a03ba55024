"""The probes experiment 003 generates from. Read while planning (rules/exp003.smk), so
nothing here imports torch: a dry run stays quick."""

from __future__ import annotations

from typing import Any


def generation_probes(probes: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The probes experiment 003 generates from: the first ``max_probes`` of the probe set."""
    return probes[: settings["max_probes"]]

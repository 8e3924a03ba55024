"""One model job, for any experiment: the model loaded, its tuned lens opened where the job
has one, the experiment's own run, and its JSON (the model's metadata first) and records
written together or not at all. Each experiment's ``write_*_outputs`` is this with its run."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.config.settings import LensSettings
from workflow.lens.records import COLUMNS, LIST_COLUMNS, write_outputs
from workflow.lens.session import model_metadata, open_tuned_lens
from workflow.model.load import LoadedModel, ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    """A model job's two outputs, and the records' columns (the lens records' by default)."""

    summary: str | os.PathLike[str]
    records: str | os.PathLike[str]
    columns: tuple[str, ...] = COLUMNS
    list_columns: tuple[str, ...] = LIST_COLUMNS


@dataclass(frozen=True)
class OpenedTunedLens:
    """A trained tuned lens opened for a job's model: the lens, its training config, its folder."""

    lens: Any  # workflow.lens.tuned.TunedLens
    config: dict[str, Any]
    path: Path

    def recorded(self, *keys: str) -> dict[str, Any]:
        """What a JSON says of the tuned lens it read: its folder and these keys of its config."""
        return {"path": str(self.path), **{key: self.config[key] for key in keys}}


# The experiment's part of a job: (the model, its tuned lens or None) -> (what the JSON
# holds after the model's metadata, in its order; the records' rows).
Run = Callable[[LoadedModel, "OpenedTunedLens | None"], tuple[dict[str, Any], list[dict[str, Any]]]]


def run_model_job(spec: ModelSpec, settings: LensSettings, outputs: Outputs, run: Run,
                  tuned_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Load ``spec``'s model (and the tuned lens in ``tuned_dir``), run the experiment's
    ``run`` on it and write ``outputs``; returns the JSON document."""
    started = time.perf_counter()
    model = spec.load(settings)
    tuned = None
    if tuned_dir is not None:
        lens, config = open_tuned_lens(model, settings, tuned_dir)
        tuned = OpenedTunedLens(lens, config, Path(tuned_dir))
    loaded = time.perf_counter()
    part, rows = run(model, tuned)
    # Timings go to the log (and Snakemake's benchmark file), not the JSON: results hold
    # only what their inputs determine.
    document = {**model_metadata(model), **part}
    count = write_outputs(outputs.summary, outputs.records, document, rows, outputs.columns, outputs.list_columns)
    log.info("loaded in %.1f s, ran in %.1f s, wrote %d records", loaded - started, time.perf_counter() - loaded, count)
    return document

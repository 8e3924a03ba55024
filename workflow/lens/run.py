"""Probes through the lens at every layer, below every experiment: the records (one row per
probe, lens, layer and position) and, per probe, where the answer becomes the lens's top-1
and the identity check at its last prompt position.

``lens_batches`` tokenises the probes, refuses any the model cannot take before any work,
and yields each batch (``LensBatch``) with its residuals, the model's own logits, and every
probe's reading (``ProbeReading``) done; an experiment adds what it computes from the same
residuals (001: the answer's scores at the last layer and the tuned lens's calibration).
``read_probes`` is the lens run alone: the records, the probes' readings and the identity
check, for a notebook, a benchmark or a test of the lens.

Probes run in batches of ``batch_size`` that share a padded length (``batches``); the
numbers of a probe are the same whatever its batch and whichever other probes exist, as
every computation they pass through has a shape of the probe's own: every probe is padded to
its canonical length, a forward pass holds ``forward_rows(length)`` sequences, every matrix
product the lens computes on several probes' rows has PRODUCT_ROWS rows, and a batch's last
positions are decoded over vocabulary blocks of a fixed width.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from workflow.config.settings import PatchscopeSettings
from workflow.model.backends import length_batches
from workflow.lens.session import (
    LensSession,
    LensSettings,
    answer_layers,
    answer_warnings,
    check_context,
    check_finite,
    recorded_deviation,
    tokenize_probe,
)
from workflow.lens.readout import FinalLogits
from workflow.lens.records import in_record_order, lens_row
from workflow.model.load import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class Tokenised:
    index: int  # in the probe set
    probe: dict[str, Any]
    input_ids: list[int]
    answer_ids: list[int]

    @property
    def sequence(self) -> list[int]:
        """The prompt and all but the last answer token: the last layer can score every
        answer token (teacher-forced) in the same forward pass."""
        return self.input_ids + self.answer_ids[:-1]

    @property
    def read(self) -> int:
        """The last prompt position: where the lens reads the answer's first token."""
        return len(self.input_ids) - 1

    def warnings(self, tokenizer) -> list[str]:
        return answer_warnings(tokenizer, self.probe, self.answer_ids)


def tokenised(model: LoadedModel, probes: list[dict[str, Any]]) -> list[Tokenised]:
    """The probes tokenised, each checked against the model's positions (before any work),
    and what a user must know about its answer logged."""
    items = [Tokenised(i, p, *tokenize_probe(model.tokenizer, p)) for i, p in enumerate(probes)]
    for item in items:
        check_context(model, item.probe, len(item.sequence))
        for warning in item.warnings(model.tokenizer):
            log.warning("model %s, probe %s: %s", model.key, item.probe["id"], warning)
    return items


def batches(items: list[Tokenised], batch_size: int) -> list[tuple[int, list[Tokenised]]]:
    """(padded length, probes) batches: probes of one canonical length together, in probe
    order (``length_batches``)."""
    return [(length, [items[i] for i in indices]) for length, indices in length_batches([len(item.sequence) for item in items], batch_size)]


@dataclass
class ProbeReading:
    """One probe read by every lens: its record rows (record order), the top-1 id at every
    layer of its last prompt position per lens, and the identity check there."""

    item: Tokenised
    answer_token: str
    rows: list[dict[str, Any]]
    last_top1: dict[str, list[int]]
    deviation: dict[str, float]

    def top1_layers(self, lens: str = "logit") -> tuple[int | None, int | None]:
        """The first layer where the answer's first token is ``lens``'s top-1, and the layer
        from which it stays top-1."""
        return answer_layers(self.last_top1[lens], self.item.answer_ids[0])

    def summary(self, tokenizer) -> dict[str, Any]:
        """What every experiment's JSON says of a probe the lens read."""
        probe = self.item.probe
        first, stable = self.top1_layers("logit")
        return {
            "id": probe["id"],
            "prompt": probe["prompt"],
            "answer": probe["answer"],
            "answer_token": self.answer_token,
            "answer_token_id": self.item.answer_ids[0],
            "input_ids": self.item.input_ids,
            "answer_token_ids": self.item.answer_ids,
            "first_top1_layer": first,
            "stable_top1_layer": stable,
            # Every other lens's own (the tuned lens's, the patchscope's), under its name.
            **{lens: dict(zip(("first_top1_layer", "stable_top1_layer"), self.top1_layers(lens)))
               for lens in self.last_top1 if lens != "logit"},
            "identity_check": recorded_deviation(self.deviation),
            "warnings": self.item.warnings(tokenizer),
        }


@dataclass
class LensBatch:
    """A batch of probes run through the model and read by every lens."""

    length: int  # the padded length
    items: list[Tokenised]
    residuals: torch.Tensor  # [L+1, B, length, d]
    model_logits: torch.Tensor  # [B, V], the model's own at each probe's last prompt position
    readings: list[ProbeReading]

    def last_position(self) -> torch.Tensor:
        """Each probe's residuals at its last prompt position, every layer: [L+1, B, d]."""
        return torch.stack([self.residuals[:, b, item.read] for b, item in enumerate(self.items)], 1)


def lens_batches(session: LensSession, probes: list[dict[str, Any]], batch_size: int = 32) -> Iterator[LensBatch]:
    """Every probe through the model and ``session``'s lenses, a batch at a time (progress
    logged). All probes are tokenised and checked before the first batch runs."""
    model = session.model
    items = tokenised(model, probes)
    done = 0
    started = time.perf_counter()
    for length, batch in batches(items, batch_size):
        yield lens_batch(session, batch, length)
        done += len(batch)
        log.info("probes %d/%d (padded length %d, batch of %d) in %.1f s", done, len(items), length, len(batch), time.perf_counter() - started)


def lens_batch(session: LensSession, batch: list[Tokenised], length: int) -> LensBatch:
    """One batch of probes through the model and the lenses, the residuals checked finite
    and the lens at the last layer checked against the model's logits."""
    model = session.model
    residuals, model_logits = model.backend.capture_batch([item.sequence for item in batch], length, [item.read for item in batch],
                                                          from_read=session.settings.positions == "last")
    for b, item in enumerate(batch):
        check_finite(model, item.probe, residuals[:, b, : len(item.sequence)])
    found = LensBatch(length, batch, residuals, model_logits, [])
    per_lens, lens_logits = lens_statistics_of_batch(session, found)
    deviations = session.check_identity(found.last_position()[-1], model_logits, [f"probe {item.probe['id']!r}" for item in batch],
                                        lens_logits=lens_logits)
    for b, item in enumerate(batch):
        found.readings.append(probe_reading(session, item, per_lens, b, deviations[b]))
    return found


def lens_statistics_of_batch(session: LensSession, batch: LensBatch) -> tuple[dict[str, dict[int, list]], torch.Tensor]:
    """Per lens, per probe of the batch: (position, statistics) of every layer, at every
    prompt position or (positions: last) at its last one; and the reference head's logits
    at each probe's last prompt position [B, V], as the first lens's pass computed them
    (for the identity check)."""
    per_lens: dict[str, dict[int, list]] = {name: {} for name in session.lens_names}
    items = batch.items
    if session.settings.positions == "last":
        last = batch.last_position()
        answers = torch.tensor([item.answer_ids[0] for item in items])
        final = FinalLogits(list(range(len(items))))
        for lens in session.lenses:
            for stats in session.statistics(last, answers, lens, separate_positions=True, final=final):
                per_lens[lens.name].setdefault(stats.position, []).append((items[stats.position].read, stats))
        return per_lens, final.logits
    finals = []
    for b, item in enumerate(items):
        own = batch.residuals[:, b, : len(item.input_ids)]
        final = FinalLogits([item.read])
        for lens in session.lenses:
            per_lens[lens.name][b] = [(stats.position, stats) for stats in session.statistics(own, item.answer_ids[0], lens, final=final)]
        finals.append(final.logits)
    return per_lens, torch.cat(finals)


def probe_reading(session: LensSession, item: Tokenised, per_lens, b: int, deviation: dict[str, float]) -> ProbeReading:
    """Probe ``b`` of a batch: its record rows and its top-1 at the last prompt position."""
    names = session.names
    answer_token = names(item.answer_ids[0])
    rows = []
    last_top1: dict[str, list[int]] = {}
    for lens_name, found in per_lens.items():
        last_top1[lens_name] = []
        for position, stats in sorted(found[b], key=lambda ps: (ps[1].layer, ps[0])):
            rows.append(lens_row(session.model.key, item.probe["id"], lens_name, stats, position,
                                 names(item.input_ids[position]), answer_token, names))
            if position == item.read:
                last_top1[lens_name].append(stats.topk_ids[0])
    return ProbeReading(item, answer_token, in_record_order(rows), last_top1, deviation)


@dataclass
class LensReadings:
    """``read_probes``'s result: the records of every probe (001's columns, probe order),
    every probe's summary (``ProbeReading.summary``), and the identity check of the run
    (the worst deviation, as the JSON records it)."""

    rows: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    identity_check: dict[str, float]


# more than 6 parameters: the model, its probes and each lens's settings
def read_probes(model: LoadedModel, probes: list[dict[str, Any]], settings: LensSettings = LensSettings(), tuned=None,
                batch_size: int = 32, patchscope: PatchscopeSettings | None = None) -> LensReadings:
    """The lens run alone: every probe read at every layer by the logit lens, by the tuned
    lens where its translators (``workflow.lens.tuned.TunedLens``) are given and by the
    patchscope lens where its settings are."""
    session = LensSession(model, settings.for_probes(len(probes)), tuned, patchscope)
    readings: dict[int, ProbeReading] = {}
    for batch in lens_batches(session, probes, batch_size):
        readings.update((r.item.index, r) for r in batch.readings)
    ordered = [readings[i] for i in range(len(probes))]
    return LensReadings(
        [row for r in ordered for row in r.rows],
        [r.summary(model.tokenizer) for r in ordered],
        session.identity.recorded(),
    )

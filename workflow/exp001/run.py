"""Experiment 001, layers and logits: the normalised logit lens at every layer.

``run_lens`` runs every probe through a loaded model, captures the residual
stream with hooks (layer 0 = entering block 0, layer k = after block k), decodes
each layer through the model's own final norm and unembedding, and checks at run
time that the lens at the last layer reproduces the model's own logits.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from workflow.errors import UserError
from workflow.backends import canonical_length
from workflow.lens import rows_padded
from workflow.lens_setup import (
    LensSession,
    LensSettings,
    answer_layers,
    answer_warnings,
    check_context,
    check_finite,
    model_metadata,
    open_tuned_lens,
    recorded_deviation,
    tokenize_probe,
)
from workflow.models import LoadedModel
from workflow.records import in_record_order, lens_row, write_outputs

log = logging.getLogger(__name__)


# Temperatures at which each probe's final top-1 probability is recorded, for calibration by
# temperature scaling (the evaluation picks the one with the lowest calibration error):
# 2^(k/2) for k = -4..8, 0.25 to 16.
TEMPERATURES = tuple(round(2 ** (k / 2), 4) for k in range(-4, 9))
# Rows of full-vocabulary logits decoded at once for the last layer's scores.
FINAL_ROWS = 32


@dataclass
class Tokenised:
    index: int  # in the probe set
    probe: dict[str, Any]
    input_ids: list[int]
    answer_ids: list[int]

    @property
    def sequence(self) -> list[int]:
        """The prompt and all but the last answer token: the last layer scores every answer
        token (teacher-forced) in the same forward pass."""
        return self.input_ids + self.answer_ids[:-1]

    def warnings(self, tokenizer) -> list[str]:
        return answer_warnings(tokenizer, self.probe, self.answer_ids)


def batches(items: list[Tokenised], batch_size: int) -> list[tuple[int, list[Tokenised]]]:
    """(padded length, probes) batches: probes of one canonical length together, in probe
    order, at most ``batch_size`` each."""
    groups: dict[int, list[Tokenised]] = {}
    for item in items:
        groups.setdefault(canonical_length(len(item.sequence)), []).append(item)
    return [(length, group[i : i + batch_size]) for length, group in sorted(groups.items()) for i in range(0, len(group), batch_size)]


def final_scores(reference, rows: torch.Tensor, targets: list[int], firsts: list[bool]) -> dict[str, torch.Tensor]:
    """For rows [n, d] of last-layer residuals: the model-faithful logits' log-probability of
    each row's target token and its rank, the top-1 id and log-probability, and, for the
    rows ``firsts`` marks (a probe's last prompt position), the logits themselves (for the
    identity check) and the top-1 log-probability at each of TEMPERATURES (NaN elsewhere).
    Decoded FINAL_ROWS rows at a time, each block padded to MIN_PRODUCT_ROWS rows, and each
    row's sums taken alone, so a row's numbers do not depend on its neighbours."""
    n = rows.shape[0]
    out = {
        "target_lp": torch.empty(n, dtype=torch.float64),
        "target_rank": torch.empty(n, dtype=torch.long),
        "top1": torch.empty(n, dtype=torch.long),
        "top1_lp": torch.empty(n, dtype=torch.float64),
        "tempered": torch.full((n, len(TEMPERATURES)), float("nan"), dtype=torch.float64),
    }
    kept: list[torch.Tensor] = []
    for r0 in range(0, n, FINAL_ROWS):
        logits = rows_padded(reference.logits, rows[r0 : r0 + FINAL_ROWS]).cpu()
        for i, z in enumerate(logits):
            r = r0 + i
            top = int(z.argmax())
            lse = float(torch.logsumexp(z.double(), -1))
            target = targets[r]
            out["target_lp"][r] = float(z[target]) - lse
            # Ties share the better rank, as in the records.
            out["target_rank"][r] = int((z > z[target]).sum()) + 1
            out["top1"][r] = top
            out["top1_lp"][r] = float(z[top]) - lse
            if firsts[r]:
                kept.append(z)
                out["tempered"][r] = tempered_top1(z)
    out["logits"] = torch.stack(kept)
    return out


def tempered_top1(logits: torch.Tensor) -> torch.Tensor:
    """log p_T(top-1) = -log sum exp((z - z_top) / T) for each of TEMPERATURES, [13] for a
    row of logits [V]; each row's sums are its own."""
    shifted = logits - logits.max()  # <= 0: exp cannot overflow at any temperature
    # One pass per temperature over the row (which stays in the cache), summed in float64:
    # faster than one [13, V] product (bench/README.md, "Why the code is shaped as it is").
    return torch.tensor([-math.log(float(torch.exp(shifted * (1.0 / t)).sum(dtype=torch.float64))) for t in TEMPERATURES],
                        dtype=torch.float64)


def layer_calibration(head, translator, rows: torch.Tensor, answers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Through ``translator`` (the tuned lens) at every layer of each probe's last position
    (``rows`` [L+1, B, d]): the top-1 log-probability at each of TEMPERATURES [L+1, B, 13]
    and whether the top-1 is the answer's first token [L+1, B]."""
    n_layers_plus_one, batch, _ = rows.shape
    tempered = torch.empty(n_layers_plus_one, batch, len(TEMPERATURES), dtype=torch.float64)
    correct = torch.empty(n_layers_plus_one, batch, dtype=torch.bool)
    answer = torch.tensor(answers)
    for layer in range(n_layers_plus_one):
        hidden = rows_padded(lambda h: translator(h, layer), rows[layer])
        for b0 in range(0, batch, FINAL_ROWS):
            logits = rows_padded(head.logits, hidden[b0 : b0 + FINAL_ROWS]).cpu()
            for i, z in enumerate(logits):
                tempered[layer, b0 + i] = tempered_top1(z)
            correct[layer, b0 : b0 + len(logits)] = logits.argmax(-1) == answer[b0 : b0 + len(logits)]
    return tempered, correct


def calibration_bins(tempered: list[torch.Tensor], correct: list[torch.Tensor], bins: int = 10) -> list:
    """Per layer, per temperature, per confidence bin [k/bins, (k+1)/bins): [count, sum of
    confidences, count correct], summed over probes in probe order (``tempered``: one [L+1,
    13] per probe). Enough to compute the calibration error at every layer and temperature."""
    conf = torch.stack(tempered).exp()  # [P, L+1, T]
    hit = torch.stack(correct).double()  # [P, L+1]
    index = (conf * bins).long().clamp(max=bins - 1)
    table = []
    for layer in range(conf.shape[1]):
        per_t = []
        for t in range(conf.shape[2]):
            cells = []
            for k in range(bins):
                members = index[:, layer, t] == k
                cells.append([int(members.sum()), float(conf[members, layer, t].sum()), int(hit[members, layer].sum())])
            per_t.append(cells)
        table.append(per_t)
    return table


def run_lens(model: LoadedModel, probes: list[dict[str, Any]], settings: LensSettings, tuned=None, batch_size: int = 32):
    """Run every probe; return (summary for the JSON, list of record rows).

    Probes run in batches of ``batch_size`` that share a padded length (``batches``); the
    records and JSON of a probe are the same whatever its batch (every probe is padded to
    its canonical length, every matrix product has at least MIN_PRODUCT_ROWS rows, and a
    batch's last positions are decoded over vocabulary blocks of a fixed width).
    ``tuned`` (a ``workflow.tuned.TunedLens``) adds rows with ``lens`` = ``tuned``: the same
    residuals through the layer's translator, then the same norm and unembedding.
    """
    session = LensSession(model, settings.for_probes(len(probes)), tuned)
    items = [Tokenised(i, p, *tokenize_probe(model.tokenizer, p)) for i, p in enumerate(probes)]
    for item in items:  # before any work
        check_context(model, item.probe, len(item.sequence))
        for warning in item.warnings(model.tokenizer):
            log.warning("model %s, probe %s: %s", model.key, item.probe["id"], warning)
    results: dict[int, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    calibration: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # tuned lens, per probe
    done = 0
    started = time.perf_counter()
    for length, batch in batches(items, batch_size):
        batch_results, batch_calibration = lens_batch(session, batch, length)
        results.update(batch_results)
        calibration.update(batch_calibration)
        done += len(batch)
        log.info("probes %d/%d (padded length %d, batch of %d) in %.1f s", done, len(items), length, len(batch), time.perf_counter() - started)
    rows = [row for index in range(len(items)) for row in results[index][0]]
    return lens_summary(session, [results[i][1] for i in range(len(items))], [calibration[i] for i in sorted(calibration)]), rows


def lens_batch(session: LensSession, batch: list[Tokenised], length: int):
    """One batch of probes through the model and the lenses: ({probe index: (record rows,
    JSON summary)}, {probe index: (tempered top-1 probabilities, correct)} for the tuned lens)."""
    model = session.model
    reads = [len(item.input_ids) - 1 for item in batch]
    residuals, model_logits = model.backend.capture_batch([item.sequence for item in batch], length, reads)
    for b, item in enumerate(batch):
        check_finite(model, item.probe, residuals[:, b, : len(item.sequence)])
    # The last layer at the last prompt position and at every answer position after it.
    spans = [(b, item, range(len(item.input_ids) - 1, len(item.sequence))) for b, item in enumerate(batch)]
    scores = final_scores(
        session.heads.reference,
        torch.cat([residuals[-1, b, list(span)] for b, _, span in spans]),
        [t for _, item, _ in spans for t in item.answer_ids],
        [k == 0 for _, item, _ in spans for k in range(len(item.answer_ids))],
    )
    offsets = [0]
    for _, item, _ in spans:
        offsets.append(offsets[-1] + len(item.answer_ids))
    per_lens = lens_rows_of_batch(session, batch, residuals, reads)
    calibration = {}
    if session.tuned is not None:
        last = torch.stack([residuals[:, b, reads[b]] for b in range(len(batch))], 1)
        tempered, correct = layer_calibration(session.heads.lens, session.tuned, last, [item.answer_ids[0] for item in batch])
        for b, item in enumerate(batch):
            calibration[item.index] = (tempered[:, b], correct[:, b])
    results = {}
    for b, item in enumerate(batch):
        deviation = session.identity(scores["logits"][b : b + 1], model_logits[b : b + 1], f"probe {item.probe['id']!r}")
        results[item.index] = probe_outputs(model, item, per_lens, b, scores, offsets[b], deviation, session.names)
    return results, calibration


def lens_rows_of_batch(session: LensSession, batch: list[Tokenised], residuals: torch.Tensor, reads: list[int]):
    """Per lens, per probe of the batch: (position, statistics) of every layer, at every
    prompt position or (positions: last) at its last one."""
    per_lens: dict[str, dict[int, list]] = {name: {} for name in session.lens_names}
    if session.settings.positions == "last":
        last = torch.stack([residuals[:, b, reads[b]] for b in range(len(batch))], 1)  # [L+1, B, d]
        answers = torch.tensor([item.answer_ids[0] for item in batch])
        for name, translator in session.lenses:
            for stats in session.statistics(last, answers, translator, separate_positions=True):
                per_lens[name].setdefault(stats.position, []).append((reads[stats.position], stats))
    else:
        for b, item in enumerate(batch):
            own = residuals[:, b, : len(item.input_ids)]
            for name, translator in session.lenses:
                per_lens[name][b] = [(stats.position, stats) for stats in session.statistics(own, item.answer_ids[0], translator)]
    return per_lens


def lens_summary(session: LensSession, probe_summaries: list[dict[str, Any]], calibration: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """The JSON of the run, less the model's metadata: settings, identity check, answer
    scoring, temperatures, the tuned lens's calibration bins, and every probe's summary."""
    return {
        "lens": session.settings.recorded(),
        "identity_check": session.identity.recorded(),
        "answer_scoring": {
            "records": "the answer's first token, at every layer",
            "answer_logprob": "the whole answer, teacher-forced, by the model at its last layer",
        },
        "temperatures": list(TEMPERATURES),
        **(
            {"tuned_calibration": {
                "about": "per layer, per temperature, per confidence bin k/10..(k+1)/10 of the tuned lens's top-1 "
                         "probability at each probe's last position: [count, sum of confidences, count correct]",
                "bins": calibration_bins([c[0] for c in calibration], [c[1] for c in calibration]),
            }}
            if session.tuned is not None else {}
        ),
        "probes": probe_summaries,
    }


def probe_outputs(model, item: Tokenised, per_lens, b: int, scores, first: int, deviation, names) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One probe's record rows and its JSON summary."""
    probe, input_ids = item.probe, item.input_ids
    answer_id = item.answer_ids[0]
    answer_token = names(answer_id)
    rows = []
    last_top1: dict[str, list[int]] = {}
    for lens_name, found in per_lens.items():
        last_top1[lens_name] = []
        for position, stats in sorted(found[b], key=lambda ps: (ps[1].layer, ps[0])):
            rows.append(lens_row(model.key, probe["id"], lens_name, stats, position, names(input_ids[position]), answer_token, names))
            if position == len(input_ids) - 1:
                last_top1[lens_name].append(stats.topk_ids[0])
    rows = in_record_order(rows)
    first_layer, stable = answer_layers(last_top1["logit"], answer_id)
    n_answer = len(item.answer_ids)
    span = slice(first, first + n_answer)
    final_top1 = int(scores["top1"][first])
    summary = {
        "id": probe["id"],
        "prompt": probe["prompt"],
        "answer": probe["answer"],
        "answer_token": answer_token,
        "answer_token_id": answer_id,
        "reverse_of": probe.get("reverse_of"),
        "style": probe.get("style", "plain"),
        **({"relation": probe["relation"]} if probe.get("relation") else {}),
        "input_ids": input_ids,
        "input_tokens": [names(i) for i in input_ids],
        "answer_token_ids": item.answer_ids,
        "final_top1_token": names(final_top1),
        "final_top1_prob": math.exp(float(scores["top1_lp"][first])),
        "final_answer_prob": math.exp(float(scores["target_lp"][first])),
        "final_answer_rank": int(scores["target_rank"][first]),
        # The whole answer: its log-probability token by token, and whether greedy decoding
        # would produce it (every answer token top-1 after the ones before it).
        "answer_logprob": float(scores["target_lp"][span].sum()),
        "answer_greedy": bool((scores["target_rank"][span] == 1).all()),
        "final_top1_prob_by_temperature": [math.exp(float(v)) for v in scores["tempered"][first]],
        "first_top1_layer": first_layer,
        "stable_top1_layer": stable,
        **(
            {"tuned": dict(zip(("first_top1_layer", "stable_top1_layer"), answer_layers(last_top1["tuned"], answer_id)))}
            if "tuned" in last_top1
            else {}
        ),
        "identity_check": recorded_deviation(deviation),
        "warnings": item.warnings(model.tokenizer),
    }
    return rows, summary


def write_lens_outputs(
    model_key: str,
    entry: dict[str, Any],
    prepared_dir: str | None,
    device: str,
    dtype: str,
    lens: dict[str, Any],
    probes: list[dict[str, Any]],
    summary_path: str,
    records_path: str,
    backend: str = "auto",
    tuned_dir: str | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Load ``model_key``, run every probe and write its JSON summary and records CSV.

    Both files appear together or not at all.
    """
    from workflow.models import load_model

    started = time.perf_counter()
    settings = LensSettings.from_config(lens)
    for probe in probes:
        if not probe["prompt"].strip():
            raise UserError(f"probe {probe['id']!r}: the prompt is empty; give it some text (config key probes)")
    model = load_model(
        model_key, entry, prepared_dir, device=device, dtype=dtype, backend=backend, lens=settings
    )
    tuned = tuned_info = None
    if tuned_dir is not None:
        tuned, tuned_config = open_tuned_lens(model, settings, tuned_dir)
        tuned_info = {"path": str(tuned_dir), "settings": tuned_config["settings"], "unembedding_sha256": tuned_config["unembedding_sha256"],
                      "heldout": tuned_config["heldout"]}
    load_seconds = time.perf_counter() - started
    summary, rows = run_lens(model, probes, settings, tuned, batch_size)
    # Timings go to the log (and Snakemake's benchmark file), not the JSON: results hold
    # only what their inputs determine.
    log.info("loaded in %.1f s, lens in %.1f s", load_seconds, time.perf_counter() - started - load_seconds)
    document = {
        **model_metadata(model),
        "lenses": ["logit", "tuned"] if tuned is not None else ["logit"],
        **({"tuned_lens": tuned_info} if tuned_info else {}),
        **summary,
    }
    count = write_outputs(summary_path, records_path, document, rows)
    log.info("wrote %d records for %d probes (%.1f s)", count, len(probes), time.perf_counter() - started)
    return document

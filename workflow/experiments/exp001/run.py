"""Experiment 001, layers and logits: the normalised logit lens at every layer.

``run_lens`` is the lens run on probes (``workflow.lens.run``: the residual stream of every
probe, layer 0 = entering block 0, layer k = after block k, decoded at each layer through
the model's own final norm and unembedding, the lens at the last layer checked against the
model's own logits) and, from the same residuals, the answer's scores at the last layer
and the tuned lens's calibration; ``write_lens_outputs`` loads the model and writes the
JSON and the records.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from workflow.base.errors import UserError
from workflow.config.settings import LensSettings, PatchscopeSettings
from workflow.lens.job import OpenedTunedLens, Outputs, run_model_job
from workflow.lens.readout import rows_padded
from workflow.lens.run import LensBatch, ProbeReading, lens_batches
from workflow.lens.session import LensSession
from workflow.model.load import LoadedModel, ModelSpec

log = logging.getLogger(__name__)


# Temperatures at which each probe's final top-1 probability is recorded, for calibration by
# temperature scaling (the evaluation picks the one with the lowest calibration error):
# 2^(k/2) for k = -4..8, 0.25 to 16.
TEMPERATURES = tuple(round(2 ** (k / 2), 4) for k in range(-4, 9))
# Rows of full-vocabulary logits decoded at once for the last layer's scores.
FINAL_ROWS = 32


def final_scores(reference, rows: torch.Tensor, targets: list[int], firsts: list[bool]) -> dict[str, torch.Tensor]:
    """For rows [n, d] of last-layer residuals: the model-faithful logits' log-probability of
    each row's target token and its rank, the top-1 id and log-probability, and, for the
    rows ``firsts`` marks (a probe's last prompt position), the top-1 log-probability at
    each of TEMPERATURES (NaN elsewhere).
    Decoded FINAL_ROWS rows at a time, each product PRODUCT_ROWS rows (``rows_padded``), and
    each row's sums taken alone, so a row's numbers do not depend on its neighbours."""
    n = rows.shape[0]
    out = {
        "target_lp": torch.empty(n, dtype=torch.float64),
        "target_rank": torch.empty(n, dtype=torch.long),
        "top1": torch.empty(n, dtype=torch.long),
        "top1_lp": torch.empty(n, dtype=torch.float64),
        "tempered": torch.full((n, len(TEMPERATURES)), float("nan"), dtype=torch.float64),
    }
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
                out["tempered"][r] = tempered_top1(z)
    return out


def tempered_top1(logits: torch.Tensor) -> torch.Tensor:
    """log p_T(top-1) = -log sum exp((z - z_top) / T) for each of TEMPERATURES, [13] for a
    row of logits [V]; each row's sums are its own."""
    shifted = logits - logits.max()  # <= 0: exp cannot overflow at any temperature
    # One pass per temperature over the row (which stays in the cache), summed in float64:
    # faster than one [13, V] product (bench/README.md, "Why the code is shaped as it is").
    return torch.tensor([-math.log(float(torch.exp(shifted * (1.0 / t)).sum(dtype=torch.float64))) for t in TEMPERATURES],
                        dtype=torch.float64)


def layer_calibration(head, tuned, rows: torch.Tensor, answers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Through ``tuned`` (the tuned lens) at every layer of each probe's last position
    (``rows`` [L+1, B, d]): the top-1 log-probability at each of TEMPERATURES [L+1, B, 13]
    and whether the top-1 is the answer's first token [L+1, B]."""
    n_layers_plus_one, batch, _ = rows.shape
    tempered = torch.empty(n_layers_plus_one, batch, len(TEMPERATURES), dtype=torch.float64)
    correct = torch.empty(n_layers_plus_one, batch, dtype=torch.bool)
    answer = torch.tensor(answers)
    for layer in range(n_layers_plus_one):
        hidden = rows_padded(lambda h: tuned(h, layer), rows[layer])
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


# more than 6 parameters: the model, its probes and each lens's settings
def run_lens(model: LoadedModel, probes: list[dict[str, Any]], settings: LensSettings, tuned=None, batch_size: int = 32,
             patchscope: PatchscopeSettings | None = None):
    """Experiment 001 on every probe: (summary for the JSON, list of record rows).

    The lens run is ``workflow.lens.run``'s (records, top-1 layers, identity check); 001
    adds, from the same residuals, the answer's scores at the last layer (``final_scores``)
    and, with ``tuned`` (a ``workflow.lens.tuned.TunedLens``), the tuned lens's calibration.
    With ``patchscope`` the patchscope lens reads every layer too.
    """
    session = LensSession(model, settings.for_probes(len(probes)), tuned, patchscope)
    results: dict[int, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    calibration: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # tuned lens, per probe
    for batch in lens_batches(session, probes, batch_size):
        results.update(scored_batch(session, batch))
        if session.tuned is not None:
            tempered, correct = layer_calibration(
                session.heads.lens, session.tuned, batch.last_position(), [item.answer_ids[0] for item in batch.items]
            )
            for b, item in enumerate(batch.items):
                calibration[item.index] = (tempered[:, b], correct[:, b])
    rows = [row for index in range(len(probes)) for row in results[index][0]]
    summaries = [results[i][1] for i in range(len(probes))]
    return lens_summary(session, summaries, [calibration[i] for i in sorted(calibration)]), rows


def scored_batch(session: LensSession, batch: LensBatch) -> dict[int, tuple[list[dict[str, Any]], dict[str, Any]]]:
    """{probe index: (record rows, JSON summary)} of a batch the lens has read: the last
    layer scores the answer at the last prompt position and at every answer position after it."""
    spans = [(b, item, range(item.read, len(item.sequence))) for b, item in enumerate(batch.items)]
    scores = final_scores(
        session.heads.reference,
        torch.cat([batch.residuals[-1, b, list(span)] for b, _, span in spans]),
        [t for _, item, _ in spans for t in item.answer_ids],
        [k == 0 for _, item, _ in spans for k in range(len(item.answer_ids))],
    )
    results = {}
    first = 0
    for reading in batch.readings:
        results[reading.item.index] = (reading.rows, probe_summary(session, reading, scores, first))
        first += len(reading.item.answer_ids)
    return results


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


def probe_summary(session: LensSession, reading: ProbeReading, scores, first: int) -> dict[str, Any]:
    """One probe's JSON summary: the lens run's (``ProbeReading.summary``) with the answer's
    scores at the last layer; its answer tokens are rows ``first``.. of ``scores``."""
    names = session.names
    probe = reading.item.probe
    read = reading.summary(session.model.tokenizer)
    span = slice(first, first + len(reading.item.answer_ids))
    final_top1 = int(scores["top1"][first])
    return {
        **{key: read[key] for key in ("id", "prompt", "answer", "answer_token", "answer_token_id")},
        "reverse_of": probe.get("reverse_of"),
        "style": probe.get("style", "plain"),
        **({"relation": probe["relation"]} if probe.get("relation") else {}),
        "input_ids": read["input_ids"],
        "input_tokens": [names(i) for i in read["input_ids"]],
        "answer_token_ids": read["answer_token_ids"],
        "final_top1_token": names(final_top1),
        "final_top1_prob": math.exp(float(scores["top1_lp"][first])),
        "final_answer_prob": math.exp(float(scores["target_lp"][first])),
        "final_answer_rank": int(scores["target_rank"][first]),
        # The whole answer: its log-probability token by token, and whether greedy decoding
        # would produce it (every answer token top-1 after the ones before it).
        "answer_logprob": float(scores["target_lp"][span].sum()),
        "answer_greedy": bool((scores["target_rank"][span] == 1).all()),
        "final_top1_prob_by_temperature": [math.exp(float(v)) for v in scores["tempered"][first]],
        **{key: read[key] for key in ("first_top1_layer", "stable_top1_layer", "tuned", "patchscope", "identity_check", "warnings")
           if key in read},
    }


# more than 6 parameters: the job's model, settings, probes and outputs, and each lens's
def write_lens_outputs(model: ModelSpec, lens_settings: LensSettings, probes: list[dict[str, Any]], outputs: Outputs,
                       tuned_dir: str | None = None, batch_size: int = 32, patchscope: PatchscopeSettings | None = None) -> dict[str, Any]:
    """Run every probe through the lens on ``model`` and write its JSON and records
    (together or not at all); returns the JSON document."""
    for probe in probes:
        if not probe["prompt"].strip():
            raise UserError(f"probe {probe['id']!r}: the prompt is empty; give it some text (config key probes)")

    def run(loaded: LoadedModel, tuned: OpenedTunedLens | None):
        summary, rows = run_lens(loaded, probes, lens_settings, tuned.lens if tuned else None, batch_size, patchscope)
        return {
            "lenses": ["logit"] + (["tuned"] if tuned is not None else []) + (["patchscope"] if patchscope is not None else []),
            **({"tuned_lens": tuned.recorded("settings", "unembedding_sha256", "heldout")} if tuned else {}),
            **({"patchscope": patchscope.recorded()} if patchscope is not None else {}),
            **summary,
        }, rows

    return run_model_job(model, lens_settings, outputs, run, tuned_dir)

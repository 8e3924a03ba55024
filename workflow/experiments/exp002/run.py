"""Experiment 002's run: every pair through one model, written as its JSON and records.

``results/002/output-{model}.json``: the model's metadata (as in experiment 001), the
patching settings, the identity check, and per pair both prompts, their token ids, both
answers' token ids and the logit differences of the unpatched runs.
``results/002/output-{model}-records.csv``: one row per pair x corruption x direction x
layer x position (``workflow.experiments.exp002.records.RECORD_COLUMNS``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any


from workflow.base.errors import UserError
from workflow.config.settings import LensSettings
from workflow.experiments.exp002.patching import (
    PatchingSettings,
    patch_pair,
    subject_embedding_std,
)
from workflow.experiments.exp002.records import RECORD_COLUMNS, sweep_tokens
from workflow.lens.job import Outputs, run_model_job
from workflow.lens.pairs import pair_identity, resolved_pairs, tokenise_pair
from workflow.lens.session import LensSession, check_context
from workflow.model.load import LoadedModel, ModelSpec

log = logging.getLogger(__name__)


def run_patching(model: LoadedModel, pairs: list[dict[str, Any]], settings: PatchingSettings, lens: LensSettings):
    """Patch every pair; return (summary for the JSON, record rows)."""
    session = LensSession(model, lens)
    pairs, skipped = resolved_pairs(model, pairs)
    tokenised = [tokenise_pair(model.tokenizer, pair, model.key) for pair in pairs]
    for pair, tp in zip(pairs, tokenised):  # before any work
        check_context(model, pair, len(tp.clean_ids), "its prompts")
    captured = []
    for pair, tp in zip(pairs, tokenised):
        runs = {}
        for which, ids in (("clean", tp.clean_ids), ("corrupted", tp.corrupted_ids)):
            residuals, model_logits = model.backend.capture(ids, "all")
            session.identity(session.heads.reference.logits(residuals[-1, -1:]), model_logits, f"pair {pair['id']!r} ({which} prompt)",
                             session.logit_bound(residuals[-1, -1:]))
            runs[which] = residuals
        captured.append(runs)
    noise_std = settings.trace_noise * subject_embedding_std(
        [(runs[w], tp.subject_positions) for runs, tp in zip(captured, tokenised) for w in ("clean", "corrupted")]
    )
    rows: list[dict[str, Any]] = []
    summaries = []
    for index, (pair, tp, runs) in enumerate(zip(pairs, tokenised, captured), start=1):
        for warning in tp.warnings:
            log.warning("model %s, pair %s: %s", model.key, pair["id"], warning)
        done = patch_pair(model.backend, session.heads.reference, tp, runs["clean"], runs["corrupted"], noise_std, settings)
        pair_rows, pair_summary = pair_outputs(session, pair, tp, done)
        rows += pair_rows
        summaries.append(pair_summary)
        baselines = done["baselines"]
        log.info(
            "pair %d/%d %s: %d tokens, LD clean %.3f, corrupted %.3f%s (%d patched runs)",
            index, len(pairs), pair["id"], len(tp.clean_ids), baselines["logit_diff_clean"], baselines["logit_diff_corrupted"],
            f", noised {baselines['logit_diff_noised']:.3f}" if "logit_diff_noised" in baselines else "", done["runs"],
        )
    summary = {
        "patching": settings.recorded(),
        "lens": {"use_fp32_unembed": lens.use_fp32_unembed},
        "trace_noise_std": noise_std,
        "identity_check": session.identity.recorded(),
        "pairs": summaries,
        **({"skipped_pairs": skipped} if skipped else {}),
    }
    return summary, rows


def pair_outputs(session: LensSession, pair: dict[str, Any], tp, done: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One pair's record rows (RECORD_COLUMNS) and its JSON summary, from its sweeps (``done``)."""
    names, key = session.names, session.model.key
    clean_tokens = [names(i) for i in tp.clean_ids]
    corrupted_tokens = [names(i) for i in tp.corrupted_ids]
    rows = []
    for (corruption, direction), cells in done["results"].items():
        reads, source = sweep_tokens(corruption, direction, clean_tokens, corrupted_tokens)
        for (layer, position), ld, rec in cells:
            rows.append({
                "model": key, "pair": pair["id"], "direction": direction, "layer": layer, "position": position,
                "token": reads[position], "logit_diff": ld, "recovered": rec, "corruption": corruption,
                "source_token": source[position],
            })
    summary = {
        **pair_identity(pair, tp),
        "clean_tokens": clean_tokens,
        "corrupted_tokens": corrupted_tokens,
        "subject_positions": tp.subject_positions,
        "clean_answer_token_id": tp.clean_answer_id,
        "corrupted_answer_token_id": tp.corrupted_answer_id,
        "clean_answer_token": names(tp.clean_answer_id),
        "corrupted_answer_token": names(tp.corrupted_answer_id),
        **done["baselines"],
        "warnings": tp.warnings,
    }
    return rows, summary


def write_patching_outputs(model: ModelSpec, lens_settings: LensSettings, patching: dict[str, Any], outputs: Outputs) -> dict[str, Any]:
    """Patch every pair on ``model`` and write its JSON and records (together or not at all)."""
    settings = PatchingSettings.from_config(patching)
    pairs = patching.get("pairs") or []
    if not pairs:
        raise UserError("experiment 002 has no pairs: add some under patching.pairs in config/config.yaml")
    return run_model_job(model, lens_settings, replace(outputs, columns=RECORD_COLUMNS, list_columns=()),
                         lambda loaded, tuned: run_patching(loaded, pairs, settings, lens_settings))

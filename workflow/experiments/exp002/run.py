"""Experiment 002's run: every pair through one model, written as its JSON and records.

``results/002/output-{model}.json``: the model's metadata (as in experiment 001), the
patching settings, the identity check, and per pair both prompts, their token ids, both
answers' token ids and the logit differences of the unpatched runs.
``results/002/output-{model}-records.csv``: one row per pair x corruption x direction x
layer x position (``workflow.experiments.exp002.records.RECORD_COLUMNS``).
"""

from __future__ import annotations

import logging
import time
from typing import Any


from workflow.base.errors import UserError
from workflow.experiments.exp002.patching import (
    PatchingSettings,
    patch_pair,
    subject_embedding_std,
    tokenise_pair,
)
from workflow.experiments.exp002.pairs import resolve_pair
from workflow.experiments.exp002.records import RECORD_COLUMNS, sweep_tokens
from workflow.lens.session import LensSession, LensSettings, check_context, model_metadata
from workflow.model.load import LoadedModel
from workflow.lens.records import write_outputs

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
            session.identity(session.heads.reference.logits(residuals[-1, -1:]), model_logits, f"pair {pair['id']!r} ({which} prompt)")
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


def resolved_pairs(model: LoadedModel, pairs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the pairs patched on this model, those left out). A pair made from the probe set
    whose probe has no partner of its token length on this model is left out (said in the
    JSON, the log and its figure); any other problem stops."""
    resolved, skipped = [], []
    for pair in pairs:
        try:
            resolved.append(resolve_pair(model.tokenizer, pair, model.key))
        except UserError as error:
            if "corrupted_candidates" not in pair:
                raise
            log.warning("%s", error)
            skipped.append({"id": pair["id"], "probe": pair.get("probe"), "reason": str(error)})
    if not resolved:
        raise UserError(f"model {model.key!r}: no pair can be patched ({len(skipped)} made from the probe set, none with a partner)")
    return resolved, skipped


def pair_identity(pair: dict[str, Any], tp) -> dict[str, Any]:
    """What a pair's JSON entry says of it whatever the experiment (002's, 004's): its id,
    prompts, answers, probe, and the token ids run."""
    return {
        "id": pair["id"],
        "clean_prompt": pair["clean"],
        "corrupted_prompt": pair["corrupted"],
        "clean_answer": pair["clean_answer"],
        "corrupted_answer": pair["corrupted_answer"],
        "probe": pair.get("probe"),
        **({"from_probes": True} if pair.get("from_probes") else {}),
        "clean_input_ids": tp.clean_ids,
        "corrupted_input_ids": tp.corrupted_ids,
    }


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


def write_patching_outputs(
    model_key: str,
    entry: dict[str, Any],
    prepared_dir: str | None,
    device: str,
    dtype: str,
    lens: dict[str, Any],
    patching: dict[str, Any],
    summary_path: str,
    records_path: str,
    backend: str = "auto",
) -> dict[str, Any]:
    """Load ``model_key``, patch every pair and write its JSON and records (together or not at all)."""
    from workflow.model.load import load_model

    started = time.perf_counter()
    settings = PatchingSettings.from_config(patching)
    lens_settings = LensSettings.from_config(lens)
    pairs = patching.get("pairs") or []
    if not pairs:
        raise UserError("experiment 002 has no pairs: add some under patching.pairs in config/config.yaml")
    model = load_model(
        model_key, entry, prepared_dir, device=device, dtype=dtype, backend=backend, lens=lens_settings
    )
    load_seconds = time.perf_counter() - started
    summary, rows = run_patching(model, pairs, settings, lens_settings)
    log.info("loaded in %.1f s, patched in %.1f s", load_seconds, time.perf_counter() - started - load_seconds)
    document = {**model_metadata(model), **summary}
    count = write_outputs(summary_path, records_path, document, rows, RECORD_COLUMNS, ())
    log.info("wrote %d records for %d pairs", count, len(pairs))
    return document

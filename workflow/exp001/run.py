"""Experiment 001, layers and logits: the normalised logit lens at every layer.

``run_lens`` runs every probe through a loaded model, captures the residual
stream with hooks (layer 0 = entering block 0, layer k = after block k), decodes
each layer through the model's own final norm and unembedding, and checks at run
time that the lens at the last layer reproduces the model's own logits.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from workflow.atomic import atomic_paths, dumps_json
from workflow.errors import UserError
from workflow.lens import lens_statistics, logit_steps, unapplied_logit_keys
from workflow.lens_setup import (
    LensIdentityError,
    LensSettings,
    TokenNames,
    identity_deviation,
    identity_failure,
    lens_heads,
    model_metadata,
    tokenize_probe,
)
from workflow.models import LoadedModel, dtype_name
from workflow.records import rounded, write_records

log = logging.getLogger(__name__)


def answer_layers(top1_ids: list[int], answer_id: int) -> tuple[int | None, int | None]:
    """First layer where the answer is top-1, and the layer from which it stays top-1."""
    first = next((layer for layer, t in enumerate(top1_ids) if t == answer_id), None)
    stable = None
    for layer in range(len(top1_ids) - 1, -1, -1):
        if top1_ids[layer] != answer_id:
            break
        stable = layer
    return first, stable


def run_lens(model: LoadedModel, probes: list[dict[str, Any]], settings: LensSettings, tuned=None):
    """Run every probe; return (summary for the JSON, list of record rows).

    ``tuned`` (a ``workflow.tuned.TunedLens``) adds rows with ``lens`` = ``tuned``: the same
    residuals through the layer's translator, then the same norm and unembedding.
    """
    names = TokenNames(model.tokenizer)
    head, reference = lens_heads(model, settings)
    tolerance = settings.tolerance(model.dtype)
    n_layers = model.n_layers
    rows: list[dict[str, Any]] = []
    probe_summaries = []
    worst: dict[str, float] = {}
    for index, probe in enumerate(probes, start=1):
        started = time.perf_counter()
        input_ids, answer_id, warnings = tokenize_probe(model.tokenizer, probe)
        for warning in warnings:  # to the log and the console, as well as the JSON
            log.warning("model %s, probe %s: %s", model.key, probe["id"], warning)
        residuals, model_logits = model.backend.capture(input_ids, settings.positions)
        forward_seconds = time.perf_counter() - started
        # The model's own output at the last position, against the lens at layer L there.
        deviation = identity_deviation(reference, residuals[-1, -1:], model_logits)
        worst = {k: max(worst.get(k, 0.0), v) for k, v in deviation.items()}
        failed = identity_failure(deviation, tolerance)
        if failed is not None:
            steps = ", ".join(f"{op} by {key}={value:g}" for key, op, value in logit_steps(model.hf_config)) or "none"
            unapplied = unapplied_logit_keys(model.hf_config)
            raise LensIdentityError(
                f"model {model.key!r}, probe {probe['id']!r}: the lens at layer {n_layers} does not reproduce the "
                f"model's own output on {model.device}/{dtype_name(model.dtype)}: {failed} = {deviation[failed]:.3g} "
                f"(tolerance {tolerance:g}; largest logit difference {deviation['max_abs_logit_diff']:.3g}, "
                f"probability {deviation['max_abs_prob_diff']:.3g}, KL {deviation['kl_model_to_lens']:.3g} nats). "
                f"Steps applied after the unembedding: {steps}."
                + (f" The config also has {', '.join(unapplied)}, which the lens does not apply to model type "
                   f"{model.hf_config.model_type!r}: if the model uses it on its logits, add it to LOGIT_STEPS in "
                   "workflow/lens.py." if unapplied else
                   " If the architecture changes its logits after the unembedding, add that step to LOGIT_STEPS in "
                   "workflow/lens.py; otherwise the device may compute wrong results: try device: cpu and dtype: float32.")
                + " Nothing was written."
            )
        first_position = len(input_ids) - residuals.shape[1]
        answer_token = names(answer_id)
        lenses = [("logit", None)] + ([("tuned", tuned)] if tuned is not None else [])
        last_top1: dict[str, list[int]] = {name: [] for name, _ in lenses}
        for lens_name, translator in lenses:
            for stats in lens_statistics(
                residuals, head, reference, answer_id, settings.top_k, model.vocab_size, settings.working_memory_mb, translator
            ):
                position = first_position + stats.position
                topk_tokens = [names(t) for t in stats.topk_ids]
                rows.append(
                    {
                        "model": model.key,
                        "probe": probe["id"],
                        "lens": lens_name,
                        "layer": stats.layer,
                        "position": position,
                        "input_token": names(input_ids[position]),
                        "top1_token": topk_tokens[0],
                        "top1_prob": stats.topk_probs[0],
                        "topk_tokens": topk_tokens,
                        "topk_probs": stats.topk_probs,
                        "entropy": stats.entropy,
                        "answer_token": answer_token,
                        "answer_prob": stats.answer_prob,
                        "answer_rank": stats.answer_rank,
                        "kl_to_final": stats.kl_to_final,
                    }
                )
                if position == len(input_ids) - 1:
                    last_top1[lens_name].append(stats.topk_ids[0])
        first, stable = answer_layers(last_top1["logit"], answer_id)
        model_probs = torch.softmax(model_logits[-1].float(), -1)
        final_top1 = int(model_probs.argmax())
        probe_summaries.append(
            {
                "id": probe["id"],
                "prompt": probe["prompt"],
                "answer": probe["answer"],
                "answer_token": answer_token,
                "answer_token_id": answer_id,
                "reverse_of": probe.get("reverse_of"),
                "style": probe.get("style", "plain"),
                "input_ids": input_ids,
                "input_tokens": [names(i) for i in input_ids],
                "final_top1_token": names(final_top1),
                "final_top1_prob": float(model_probs[final_top1]),
                "final_answer_prob": float(model_probs[answer_id]),
                "final_answer_rank": int((model_probs > model_probs[answer_id]).sum()) + 1,
                "first_top1_layer": first,
                "stable_top1_layer": stable,
                **(
                    {"tuned": dict(zip(("first_top1_layer", "stable_top1_layer"), answer_layers(last_top1["tuned"], answer_id)))}
                    if tuned is not None
                    else {}
                ),
                "identity_check": deviation,
                "warnings": warnings,
            }
        )
        log.info(
            "probe %d/%d %s: %d tokens, final top-1 %r (%.2f), answer %r top-1 from layer %s (forward %.2f s, all %.2f s)",
            index, len(probes), probe["id"], len(input_ids), names(final_top1), float(model_probs[final_top1]),
            answer_token, stable, forward_seconds, time.perf_counter() - started,
        )
    order = {p["id"]: i for i, p in enumerate(probes)}
    rows.sort(key=lambda r: (order[r["probe"]], r["lens"], r["layer"], r["position"]))
    summary = {
        "lens": settings.recorded(),
        "identity_check": {**worst, "tolerance": tolerance},
        "probes": probe_summaries,
    }
    return summary, rows


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
        model_key, entry, prepared_dir, device, dtype, backend, settings.use_fp32_unembed, settings.working_memory_mb
    )
    tuned = tuned_info = None
    if tuned_dir is not None:
        from workflow.tuned import load as load_tuned

        tuned, tuned_config = load_tuned(tuned_dir, lens_heads(model, settings)[1], model_key)
        tuned_info = {"path": str(tuned_dir), "settings": tuned_config["settings"], "unembedding_sha256": tuned_config["unembedding_sha256"],
                      "heldout": tuned_config["heldout"]}
    load_seconds = time.perf_counter() - started
    summary, rows = run_lens(model, probes, settings, tuned)
    # Timings go to the log (and Snakemake's benchmark file), not the JSON: results hold
    # only what their inputs determine.
    log.info("loaded in %.1f s, lens in %.1f s", load_seconds, time.perf_counter() - started - load_seconds)
    document = {
        **model_metadata(model),
        "lenses": ["logit", "tuned"] if tuned is not None else ["logit"],
        **({"tuned_lens": tuned_info} if tuned_info else {}),
        **summary,
    }
    with atomic_paths(summary_path, records_path) as (summary_tmp, records_tmp):
        summary_tmp.write_text(dumps_json(rounded(document)), encoding="utf-8")
        with open(records_tmp, "w", encoding="utf-8", newline="") as fh:
            count = write_records(fh, rows)
    log.info("wrote %d records for %d probes (%.1f s)", count, len(probes), time.perf_counter() - started)
    return document

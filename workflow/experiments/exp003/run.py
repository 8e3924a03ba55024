"""Experiment 003's run: greedy generation after every probe's prompt, the lens on each token."""

from __future__ import annotations

import logging
import time
from typing import Any

from workflow.experiments.exp003.probes import generation_probes
from workflow.lens.generation import LensGenerator, stop_token_ids
from workflow.lens.session import LensSettings, check_context, model_metadata, open_tuned_lens, tokenize_prompt
from workflow.lens.records import write_outputs

log = logging.getLogger(__name__)


def run_generation(generator: LensGenerator, probes: list[dict[str, Any]], max_new_tokens: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy replies to every probe's prompt; (JSON summary, record rows)."""
    model = generator.model
    names = generator.names
    stops = stop_token_ids(model)
    summaries, rows = [], []
    started = time.perf_counter()
    prompts = [tokenize_prompt(model.tokenizer, probe) for probe in probes]
    for probe, input_ids in zip(probes, prompts):  # before any work
        check_context(model, probe, len(input_ids) + max_new_tokens, f"its prompt and {max_new_tokens} generated tokens")
    for done, (probe, input_ids) in enumerate(zip(probes, prompts), 1):
        reply = generator.generate(input_ids, max_new_tokens, stop_ids=stops)
        rows += generator.records(reply, probe["id"])
        summaries.append({
            "id": probe["id"],
            "prompt": probe["prompt"],
            "answer": probe["answer"],
            "input_ids": input_ids,
            "generated_ids": reply.token_ids,
            "generated_tokens": [names(t) for t in reply.token_ids],
            "text": model.tokenizer.decode(reply.token_ids, skip_special_tokens=True),
            "stopped": reply.stopped,
            "tokens": [
                {
                    "index": t.index,
                    "token": names(t.token_id),
                    "token_id": t.token_id,
                    "special": t.token_id in model.tokenizer.all_special_ids,
                    "model_prob": t.model_prob,
                    **{
                        (k if lens == "logit" else f"{lens}_{k}"): v
                        for lens in t.stats
                        for k, v in (("first_top1_layer", t.first_top1_layer(lens)), ("stable_top1_layer", t.stable_top1_layer(lens)))
                    },
                }
                for t in reply.tokens
            ],
        })
        log.info("probe %d/%d %r: %d tokens (%s) in %.1f s", done, len(probes), probe["id"], len(reply.tokens), reply.stopped,
                 time.perf_counter() - started)
    return {"identity_check": generator.identity.recorded(), "probes": summaries}, rows


def write_generation_outputs(
    model_key: str,
    entry: dict[str, Any],
    prepared_dir: str | None,
    device: str,
    dtype: str,
    backend: str,
    lens: dict[str, Any],
    generation: dict[str, Any],
    probes: list[dict[str, Any]],
    summary_path: str,
    records_path: str,
    tuned_dir: str | None = None,
) -> dict[str, Any]:
    """Load ``model_key``, generate after every probe and write the JSON and records together."""
    from workflow.model.load import load_model

    settings = LensSettings.from_config({**lens, "positions": "last"})
    model = load_model(
        model_key, entry, prepared_dir, device=device, dtype=dtype, backend=backend, lens=settings
    )
    if model.from_file is not None:  # a long job, said before it starts
        log.warning("%s", model.from_file.token_cost(model_key, len(probes) * generation["max_new_tokens"])[1])
    tuned = tuned_info = None
    if tuned_dir is not None:
        tuned, tuned_config = open_tuned_lens(model, settings, tuned_dir)
        tuned_info = {"path": str(tuned_dir), "unembedding_sha256": tuned_config["unembedding_sha256"]}
    generator = LensGenerator(model, settings, tuned)
    summary, rows = run_generation(generator, generation_probes(probes, generation), generation["max_new_tokens"])
    document = {
        **model_metadata(model),
        "lenses": generator.lens_names,
        **({"tuned_lens": tuned_info} if tuned_info else {}),
        "lens": settings.recorded(),
        "generation": {**generation, "decoding": "greedy", "stop": "the model's end-of-sequence tokens",
                       "cache": "key-value cache; the lens reads each new position"},
        **summary,
    }
    count = write_outputs(summary_path, records_path, document, rows)
    log.info("wrote %d records for %d probes", count, len(summary["probes"]))
    return document

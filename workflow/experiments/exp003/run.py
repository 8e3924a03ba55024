"""Experiment 003's run: greedy generation after every probe's prompt, the lens on each token."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from workflow.config.settings import LensSettings
from workflow.experiments.exp003.probes import generation_probes
from workflow.lens.generation import LensGenerator, stop_token_ids
from workflow.lens.job import OpenedTunedLens, Outputs, run_model_job
from workflow.lens.session import check_context, tokenize_prompt
from workflow.model.load import LoadedModel, ModelSpec

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


def write_generation_outputs(model: ModelSpec, lens_settings: LensSettings, generation: dict[str, Any], probes: list[dict[str, Any]],
                             outputs: Outputs, tuned_dir: str | None = None) -> dict[str, Any]:
    """Generate after every probe on ``model`` and write the JSON and records together."""
    settings = replace(lens_settings, positions="last")

    def run(loaded: LoadedModel, tuned: OpenedTunedLens | None):
        if loaded.from_file is not None:  # a long job, said before it starts
            log.warning("%s", loaded.from_file.token_cost(loaded.key, len(probes) * generation["max_new_tokens"])[1])
        generator = LensGenerator(loaded, settings, tuned.lens if tuned else None)
        summary, rows = run_generation(generator, generation_probes(probes, generation), generation["max_new_tokens"])
        return {
            "lenses": generator.lens_names,
            **({"tuned_lens": tuned.recorded("unembedding_sha256")} if tuned else {}),
            "lens": settings.recorded(),
            "generation": {**generation, "decoding": "greedy", "stop": "the model's end-of-sequence tokens",
                           "cache": "key-value cache; the lens reads each new position"},
            **summary,
        }, rows

    return run_model_job(model, settings, outputs, run, tuned_dir)

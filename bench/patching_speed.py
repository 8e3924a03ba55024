"""Activation patching speed: experiment 002's batched sweep against the TransformerLens 4 way.

    .venv/bin/python bench/patching_speed.py [--pair capital-germany] [--repeats 2] [--models smollm2-135m-instruct gemma-3-270m]

For each embedded model (prepared into resources/models/ if needed), one pair of the
config, CPU, float32, both directions (denoise and noise) of the residual-stream sweep
over every layer x position, timed from "model loaded" to "every logit difference in
hand", best of --repeats, in one process:

- ours: ``workflow.experiments.exp002.patching.patch_pair`` without causal tracing (the two
  unpatched runs captured first, as the pipeline does): patched runs batched, each batch
  started at its lowest patched layer, only the two answers' logits computed. Its sweep
  has one layer more than TransformerLens's (the residual after the last block).
- ours + trace: the same with the default causal tracing (4 noise samples), shown for
  what the third sweep costs; TransformerLens has no counterpart.
- transformer-lens: ``transformer_lens.patching.get_act_patch_resid_pre`` on the same
  TransformerBridge, once per direction (``run_with_cache`` of the source prompt, then one
  forward pass with full logits per layer x position).

"max |dLD|" is the largest difference between the two methods' logit differences over
the cells both compute.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from lens_memory import prepared_dir  # noqa: E402
from lens_speed import best_of  # noqa: E402


def measure(model_key: str, pair: dict, repeats: int) -> dict:
    import torch

    from transformer_lens import patching as tl_patching

    from workflow.experiments.exp002.patching import PatchingSettings, patch_pair, subject_embedding_std
    from workflow.lens.pairs import tokenise_pair
    from workflow.config.settings import LensSettings
    from workflow.lens.session import lens_heads
    from workflow.model.load import load_model

    model = load_model(model_key, {"source": "local", "path": str(prepared_dir(model_key))}, None, device="cpu", dtype="float32", backend="bridge")
    _, head = lens_heads(model, LensSettings())
    tp = tokenise_pair(model.tokenizer, pair, model_key)

    def ours(samples: int):
        clean, _ = model.backend.capture(tp.clean_ids, "all")
        corrupted, _ = model.backend.capture(tp.corrupted_ids, "all")
        std = 3.0 * subject_embedding_std([(clean, tp.subject_positions), (corrupted, tp.subject_positions)])
        return patch_pair(model.backend, head, tp, clean, corrupted, std, PatchingSettings(trace_samples=samples))

    bridge = model.backend.bridge
    a, b = tp.clean_answer_id, tp.corrupted_answer_id

    def metric(logits):
        return logits[0, -1, a] - logits[0, -1, b]

    def theirs():
        clean, corrupted = torch.tensor([tp.clean_ids]), torch.tensor([tp.corrupted_ids])
        with torch.no_grad():
            _, clean_cache = bridge.run_with_cache(clean)
            denoise = tl_patching.get_act_patch_resid_pre(bridge, corrupted, clean_cache, metric)
            _, corrupted_cache = bridge.run_with_cache(corrupted)
            noise = tl_patching.get_act_patch_resid_pre(bridge, clean, corrupted_cache, metric)
        return denoise, noise

    ours_s, done = best_of(repeats, lambda: ours(0))
    trace_s, _ = best_of(repeats, lambda: ours(4))
    theirs_s, (denoise, noise) = best_of(repeats, theirs)
    difference = 0.0
    for key, grid in ((("prompt", "denoise"), denoise), (("prompt", "noise"), noise)):
        for (layer, position), ld, _ in done["results"][key]:
            if layer < model.n_layers:
                difference = max(difference, abs(ld - float(grid[layer, position])))
    return {
        "model": model_key,
        "layers": model.n_layers,
        "tokens": len(tp.clean_ids),
        "cells": (model.n_layers + 1) * len(tp.clean_ids),
        "ours": ours_s,
        "trace": trace_s,
        "theirs": theirs_s,
        "difference": difference,
    }


def main() -> None:
    import torch
    import yaml

    import workflow  # noqa: F401 (MKL's reproducible mode)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="capital-germany")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    pair = next(p for p in config["patching"]["pairs"] if p["id"] == args.pair)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"pair {args.pair}, both directions, best of {args.repeats}\n")
    print("| model | layers x tokens | ours (s/pair) | ours + trace (s/pair) | TransformerLens 4 way (s/pair) | ratio | max abs dLD |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        r = measure(model, pair, args.repeats)
        print(f"| {r['model']} | {r['layers'] + 1} x {r['tokens']} | {r['ours']:.2f} | {r['trace']:.2f} | {r['theirs']:.2f} | "
              f"{r['theirs'] / r['ours']:.1f}x | {r['difference']:.1e} |", flush=True)


if __name__ == "__main__":
    main()

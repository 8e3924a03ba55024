"""Experiment 004's component patching: exact against attribution patching (AtP, AtP*'s GradDrop).

    .venv/bin/python bench/component_patching.py [--models smollm2-135m-instruct gemma-3-270m] [--pairs capital-germany ...]

For each embedded model (prepared into resources/models/ if needed; CPU, float32, eager
attention) and each patching pair of the config (all by default), every block's attention
output, MLP output and head output at every position patched from the clean run into the
corrupted one:

- exact: ``workflow.exp004.patching.exact``, one patched forward per site, 32 to a batch;
- AtP: ``attribution``, one forward and one backward pass;
- GradDrop: ``attribution(grad_drop=True)``, one backward pass per layer (a magnitude).

Times are per pair from "model loaded", in one process. Agreement with exact patching over
every site: Spearman's rank correlation of the signed recovered fractions (AtP), of their
magnitudes (GradDrop), and the overlap of the 10 sites of largest |effect|.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from lens_memory import prepared_dir  # noqa: E402


def main() -> None:
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import workflow  # noqa: F401 (MKL's reproducible mode)
    from workflow.backends import find_decoder_layers
    from workflow.exp002.patching import tokenise_pair
    from workflow.exp004.patching import agreement, attribution, exact

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--pairs", nargs="*")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    pairs = [p for p in config["patching"]["pairs"] if not args.pairs or p["id"] in args.pairs]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| model | pair | sites | exact (s) | AtP (s) | speed-up | AtP Spearman | AtP top-10 | GradDrop (s) | GradDrop Spearman (abs) | GradDrop top-10 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in args.models:
        path = prepared_dir(key)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
        layers = find_decoder_layers(model, model.config.num_hidden_layers)
        totals = {"exact": 0.0, "atp": 0.0}
        for pair in pairs:
            tp = tokenise_pair(tokenizer, pair, key)
            answers = (tp.clean_answer_id, tp.corrupted_answer_id)
            start = time.perf_counter()
            truth = exact(model, layers, tp.clean_ids, tp.corrupted_ids, answers)
            exact_s = time.perf_counter() - start
            start = time.perf_counter()
            estimate = attribution(model, layers, tp.clean_ids, tp.corrupted_ids, answers)
            atp_s = time.perf_counter() - start
            start = time.perf_counter()
            dropped = attribution(model, layers, tp.clean_ids, tp.corrupted_ids, answers, grad_drop=True)
            drop_s = time.perf_counter() - start
            plain = agreement(truth, estimate)
            magnitude = agreement({k: v.abs() for k, v in truth.items()}, dropped)
            totals["exact"] += exact_s
            totals["atp"] += atp_s
            print(f"| {key} | {pair['id']} | {plain['sites']} | {exact_s:.2f} | {atp_s:.2f} | {exact_s / atp_s:.0f}x | "
                  f"{plain['spearman']:.3f} | {plain['top10_overlap']:.1f} | {drop_s:.2f} | {magnitude['spearman']:.3f} | "
                  f"{magnitude['top10_overlap']:.1f} |", flush=True)
        print(f"| {key} | all {len(pairs)} pairs | | {totals['exact']:.1f} | {totals['atp']:.1f} | "
              f"{totals['exact'] / totals['atp']:.0f}x | | | | | |", flush=True)


if __name__ == "__main__":
    main()

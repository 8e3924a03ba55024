"""Experiment 004's component patching: exact against attribution patching (AtP, AtP*'s GradDrop).

    .venv/bin/python bench/component_patching.py [--models smollm2-135m-instruct gemma-3-270m] [--pairs capital-germany ...]

For each embedded model (prepared into resources/models/ if needed; CPU, float32, loaded as
the pipeline loads it) and each patching pair of the config (all by default), every block's
attention output, MLP output and head output at every position patched from the clean run
into the corrupted one:

- every site: ``workflow.experiments.exp004.patching.exact(skip_unchanged=False)``, one patched forward
  per site, 32 to a batch, as TransformerLens's patching functions do (a baseline);
- exact: ``exact``, as experiment 004 runs it: no forward for the sites where both runs
  write the same (every position before the prompts differ), whose effect is exactly 0;
- AtP: ``attribution``, one forward and one backward pass;
- GradDrop: ``attribution(grad_drop=True)``, one backward pass per layer (a magnitude).

Times are per pair from "model loaded", in one process; the two exact columns agree within
1e-4 at every site (asserted). Agreement with exact patching over the sites patching can
change (``compared``: where both runs write the same, both are exactly 0 and left out):
Spearman's rank correlation of the signed recovered fractions (AtP), of their magnitudes
(GradDrop), and the overlap of the 10 sites of largest |effect|.
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
    from workflow.model.backends import find_decoder_layers
    from workflow.model.components import ComponentRunner
    from workflow.lens.pairs import tokenise_pair
    from workflow.experiments.exp004.patching import agreement, attribution, exact

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--pairs", nargs="*")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    pairs = [p for p in config["patching"]["pairs"] if not args.pairs or p["id"] in args.pairs]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| model | pair | sites | every site (s) | exact (s) | AtP (s) | AtP vs every site | AtP vs exact | compared | AtP Spearman "
          "| AtP top-10 | GradDrop (s) | GradDrop Spearman (abs) | GradDrop top-10 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in args.models:
        path = prepared_dir(key)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        runner = ComponentRunner(model, find_decoder_layers(model, model.config.num_hidden_layers))
        totals = {"every": 0.0, "exact": 0.0, "atp": 0.0}
        for pair in pairs:
            tp = tokenise_pair(tokenizer, pair, key)
            answers = (tp.clean_answer_id, tp.corrupted_answer_id)
            start = time.perf_counter()
            every = exact(runner, tp.clean_ids, tp.corrupted_ids, answers, skip_unchanged=False)
            every_s = time.perf_counter() - start
            start = time.perf_counter()
            truth = exact(runner, tp.clean_ids, tp.corrupted_ids, answers)
            exact_s = time.perf_counter() - start
            assert max(float((every[k] - truth[k]).abs().max()) for k in truth) < 1e-4
            start = time.perf_counter()
            estimate = attribution(runner, tp.clean_ids, tp.corrupted_ids, answers)
            atp_s = time.perf_counter() - start
            start = time.perf_counter()
            dropped = attribution(runner, tp.clean_ids, tp.corrupted_ids, answers, grad_drop=True)
            drop_s = time.perf_counter() - start
            plain = agreement(truth, estimate)
            magnitude = agreement({k: v.abs() for k, v in truth.items()}, dropped)
            totals["every"] += every_s
            totals["exact"] += exact_s
            totals["atp"] += atp_s
            sites = sum(len(v) for v in truth.values())
            print(f"| {key} | {pair['id']} | {sites} | {every_s:.2f} | {exact_s:.2f} | {atp_s:.2f} | {every_s / atp_s:.0f}x | "
                  f"{exact_s / atp_s:.0f}x | {plain['sites']} | {plain['spearman']:.3f} | {plain['top10_overlap']:.1f} | {drop_s:.2f} | "
                  f"{magnitude['spearman']:.3f} | {magnitude['top10_overlap']:.1f} |", flush=True)
        print(f"| {key} | all {len(pairs)} pairs | | {totals['every']:.1f} | {totals['exact']:.1f} | {totals['atp']:.1f} | "
              f"{totals['every'] / totals['atp']:.0f}x | {totals['exact'] / totals['atp']:.0f}x | | | | | | |", flush=True)


if __name__ == "__main__":
    main()

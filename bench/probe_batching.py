"""Probe-set throughput: the lens run (``workflow.lens.run``) on 200 probes, batched against one at a time.

    .venv/bin/python bench/probe_batching.py [--probes 200] [--batch-size 32] [--models smollm2-135m-instruct gemma-3-270m]

For each embedded model (prepared into resources/models/ if needed): the first --probes
probes of the shipped relation company_ceo in both directions (multi-token answers, names
of people and companies), CPU, float32, positions: last, the logit lens, timed from "model
loaded" to "records in hand" in one process: ``read_probes`` with --batch-size probes per
forward pass (padded, with an attention mask; the last positions of a batch decoded
together) against ``read_probes`` with batch size 1. "identical" says whether the two runs'
records (every field) and per-probe readings (all but the identity check's float-noise
figures) are equal.
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


def measure(model_key: str, probes: list[dict], batch_size: int) -> dict:
    from workflow.lens.run import read_probes
    from workflow.config.settings import LensSettings
    from workflow.model.load import load_model
    from workflow.lens.records import rounded

    model = load_model(model_key, {"source": "local", "path": str(prepared_dir(model_key))}, None, device="cpu", dtype="float32")
    settings = LensSettings(positions="last")
    read_probes(model, probes[:4], settings, None, batch_size)  # warm-up: kernel build, first-call costs
    timings, outputs = {}, {}
    for size in (batch_size, 1):
        started = time.perf_counter()
        outputs[size] = read_probes(model, probes, settings, None, size)
        timings[size] = time.perf_counter() - started

    def comparable(read):
        return rounded([{k: v for k, v in p.items() if k != "identity_check"} for p in read.probes])

    identical = outputs[1].rows == outputs[batch_size].rows and comparable(outputs[1]) == comparable(outputs[batch_size])
    return {"model": model_key, "layers": model.n_layers, "one": timings[1], "batched": timings[batch_size], "identical": identical}


def main() -> None:
    import torch

    import workflow  # noqa: F401 (MKL's reproducible mode)
    from workflow.config.probes import load

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    args = parser.parse_args()
    probes = load({"relations": ["company_ceo"], "directions": "both"}, REPO)[: args.probes]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{len(probes)} probes of company_ceo (both directions), positions last, logit lens, one run each\n")
    print("| model | layers | one at a time (s) | batched (s) | probes/s one at a time | probes/s batched | ratio | identical |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        r = measure(model, probes, args.batch_size)
        n = len(probes)
        print(f"| {r['model']} | {r['layers']} | {r['one']:.1f} | {r['batched']:.1f} | {n / r['one']:.1f} | {n / r['batched']:.1f} | "
              f"{r['one'] / r['batched']:.1f}x | {'yes' if r['identical'] else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()

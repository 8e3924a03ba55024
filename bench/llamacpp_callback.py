"""What llama.cpp's evaluation callback costs a decode: no callback, the asking answered in C
(workflow/native/graph_filter.c, the default), and the asking answered in Python
(``LAYERWISE_LENS_KERNEL=torch``).

    .venv/bin/python bench/llamacpp_callback.py [--models smollm2-135m-instruct gemma-3-270m llama4-shaped] [--rounds 3]
    .venv/bin/python bench/llamacpp_callback.py --models scout-width --scout-layers 4

(``scout-width``: bench/llamacpp_backend.py's file of Scout's width, written there if missing.)

llama.cpp asks the callback about every node of its graph before it hands over the ones
wanted. Per model, CPU, each way in a fresh child process, the ways taking turns for
``--rounds`` rounds (the machine's drift spread over all of them): "probe" the nine default
probes' prompts decoded with the last position's logits alone asked for, per prompt; "step"
one generated token continuing the cache (32 steps), per step; each with nothing read and
with every layer's residual copied out (which the lens reads). The medians over rounds, in
milliseconds, and the nodes asked about per decode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WAYS = {"no callback": {}, "asked in C": {}, "asked in Python": {"LAYERWISE_LENS_KERNEL": "torch"}}
STEPS = 32


def child(model: str, way: str, work: str, scout_layers: int) -> dict:
    import yaml

    from llamacpp_backend import entry_of
    from workflow.gguf.prepare import locate_gguf
    from workflow.model.llamacpp import LlamaCppModel

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    entry = entry_of(model, argparse.Namespace(work=work, layers=16, hidden=512, scout_layers=scout_layers))
    with tempfile.TemporaryDirectory(prefix="bench-callback-") as scratch:
        asked = [0]
        if way == "asked in Python":
            evaluate = LlamaCppModel._evaluate

            def counting(self, pointer, ask, user_data):
                asked[0] += bool(ask)
                return evaluate(self, pointer, ask, user_data)

            LlamaCppModel._evaluate = counting  # before the model makes its callback of it
        engine = LlamaCppModel(locate_gguf(model, entry, Path(scratch)), key=model, observe=way != "no callback",
                               **entry.get("llamacpp", {}))
        prompts = [engine.tokenize(p["prompt"]) for p in config["probes"]]
        reads = {"nothing read": []} if way == "no callback" else {"nothing read": [], "every layer read": None}
        engine.reserve(len(prompts[0]) + STEPS + 1)
        engine.run(prompts[0], layers=[], read_from=-1)
        result = {}
        for label, layers in reads.items():
            started = time.perf_counter()
            for prompt in prompts:
                engine.run(prompt, layers=layers, read_from=-1)
            result[f"probe, {label}"] = (time.perf_counter() - started) / len(prompts) * 1000
            engine.run(prompts[0], layers=[], read_from=-1)
            started = time.perf_counter()
            for i in range(STEPS):
                engine.run([prompts[0][-1]], layers=layers, start=len(prompts[0]) + i, read_from=-1)
            result[f"step, {label}"] = (time.perf_counter() - started) / STEPS * 1000
        if way == "asked in Python":
            asked[0] = 0
            engine.run(prompts[0], layers=[], read_from=-1)
            result["nodes asked about"] = asked[0]
        engine.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m", "llama4-shaped"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default=str(REPO / "resources" / "bench-gguf-layers"))
    parser.add_argument("--scout-layers", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "WAY"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.work, args.scout_layers)))
        return
    print(f"CPU: {os.cpu_count()} cores; medians of {args.rounds} rounds, milliseconds per decode\n")
    print("| model | way | probe, nothing read | probe, every layer read | step, nothing read | step, every layer read | nodes asked about |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        runs: dict[str, list[dict]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way, env in WAYS.items():
                done = subprocess.run([sys.executable, __file__, "--work", args.work, "--scout-layers", str(args.scout_layers),
                                       "--child", model, way],
                                      capture_output=True, text=True, env={**os.environ, **env}, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{model}, {way}: {done.stderr[-2000:]}")
                runs[way].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for way, results in runs.items():
            cells = []
            for column in ("probe, nothing read", "probe, every layer read", "step, nothing read", "step, every layer read"):
                values = [r[column] for r in results if column in r]
                cells.append(f"{statistics.median(values):.2f}" if values else "—")
            nodes = results[0].get("nodes asked about")
            print(f"| {model} | {way} | " + " | ".join(cells) + f" | {nodes if nodes is not None else '—'} |")


if __name__ == "__main__":
    main()

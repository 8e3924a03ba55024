"""Experiment 005's run on the embedded models: where its time goes.

    .venv/bin/python bench/words_speed.py [--models smollm2-135m-instruct gemma-3-270m] [--max-words 24]

For each embedded model (prepared into resources/models/ if needed), the default config's
`words` tasks (config/config.yaml) with --max-words concepts each, CPU, float32, the
config's backend (TransformerBridge, forward hooks where it cannot load the model): the
prompts through the model (forward passes of FORWARD_ROWS sequences, padded), then each lens
over every prompt's last position at every layer, each phase timed once, in one process per
model. The tuned lens is left out (it needs a trained lens; it costs as much as the logit
lens plus one d x d product per row). "job" is what the pipeline's run_words job adds:
loading the model, writing the records (benchmarks/005/*.tsv hold the jobs' own times).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def measure(model_key: str, max_words: int) -> dict:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    import torch

    from lens_memory import prepared_dir
    from workflow.config.settings import LensSettings, PatchscopeSettings
    from workflow.experiments.exp005.run import WordsSettings, _readings, last_residuals, task_items
    from workflow.lens.session import LensSession
    from workflow.model.backends import FORWARD_ROWS
    from workflow.model.load import load_model

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    torch.set_num_threads(torch.get_num_threads())
    started = time.perf_counter()
    model = load_model(model_key, {"source": "local", "path": str(prepared_dir(model_key))}, None, device="cpu", dtype="float32")
    loaded = time.perf_counter()
    settings = WordsSettings.from_config({**config["words"], "max_words": max_words})
    session = LensSession(model, LensSettings(positions="last"), patchscope=PatchscopeSettings.from_config(config["patchscope"]))
    patchscope = session.patchscope
    items, _ = task_items(model, settings)
    t0 = time.perf_counter()
    last = last_residuals(session, items, 32)
    t1 = time.perf_counter()
    times = {"load": loaded - started, "passes": t1 - t0}
    for name, translator in (("logit", None), ("patchscope", patchscope)):
        t = time.perf_counter()
        for start in range(0, len(items), FORWARD_ROWS):
            for layer in range(model.n_layers + 1):
                if name == "patchscope" and not patchscope.reads(layer):
                    continue
                _readings(session, last[layer, start : start + FORWARD_ROWS], layer, items[start : start + FORWARD_ROWS], translator)
        times[name] = time.perf_counter() - t
    return {"model": model_key, "prompts": len(items), "layers": model.n_layers, "backend": model.backend.name, **times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--max-words", type=int, default=24)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.max_words)))
        return
    rows = []
    for key in args.models:  # one process per model: nothing cached between them
        out = subprocess.run([sys.executable, __file__, "--child", key, "--max-words", str(args.max_words)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"experiment 005, default tasks, {args.max_words} concepts each; {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} cores\n")
    print("| model | backend | prompts | layers | load (s) | model passes (s) | logit lens (s) | patchscope lens (s) | total without tuned (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        total = r["load"] + r["passes"] + r["logit"] + r["patchscope"]
        print(f"| {r['model']} | {r['backend']} | {r['prompts']} | {r['layers']} | {r['load']:.1f} | {r['passes']:.1f} | "
              f"{r['logit']:.1f} | {r['patchscope']:.1f} | {total:.1f} |")


if __name__ == "__main__":
    main()

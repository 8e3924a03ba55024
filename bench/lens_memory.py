"""Peak memory of the lens on gemma-3-270m with a 512-token prompt, against its weights.

    .venv/bin/python bench/lens_memory.py [--tokens 512] [--model gemma-3-270m]

Each configuration runs in a fresh child process whose own peak RSS (getrusage,
Linux) is reported next to the model's float32 weight size; the target is a peak below
2x the float32 weights whatever the prompt length. Needs the prepared model in
resources/models/ (run `make demo` first, or it is prepared here).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEXT = (
    "The capital of Germany is Berlin, a city on the Spree whose museums, parks and long history draw "
    "visitors from every continent. Paris, Tokyo and Canberra are capitals too, each with its own story. "
)


def prepared_dir(model: str) -> Path:
    import yaml

    from workflow.gguf.prepare import prepare_model

    path = REPO / "resources" / "models" / model
    if not (path / "manifest.json").is_file():
        entry = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"][model]
        prepare_model(model, entry, path)
    return path


def child(args) -> None:
    import torch

    from workflow.config.settings import LensSettings
    from workflow.lens.run import read_probes
    from workflow.model.load import load_model

    model = load_model(args.model, {"source": "local", "path": args.path}, None, device="cpu", dtype="float32", backend=args.backend, lens=LensSettings(working_memory_mb=args.budget))
    ids = model.tokenizer(TEXT * 40, add_special_tokens=False)["input_ids"][: args.tokens - 1]
    prompt = model.tokenizer.decode(ids)
    started = time.perf_counter()
    read = read_probes(
        model, [{"id": "long", "prompt": prompt, "answer": " Berlin"}], LensSettings(positions=args.positions, working_memory_mb=args.budget)
    )
    seconds = time.perf_counter() - started
    params = {id(p): p for p in model.backend.hf_model.parameters()}
    weights = sum(p.numel() for p in params.values()) * 4
    print(json.dumps({
        "tokens": len(read.probes[0]["input_ids"]),
        "rows": len(read.rows),
        "lens_seconds": round(seconds, 2),
        "fp32_weights_bytes": weights,
        "torch_threads": torch.get_num_threads(),
        # Linux reports kilobytes; this process's own peak, loading included.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--positions", default="all", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="bridge", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    path = prepared_dir(args.model)
    print(f"model {args.model}, prompt of {args.tokens} tokens, CPU float32, one child process per row\n")
    print(f"{'backend':<8} {'positions':<10} {'budget MB':>9} {'tokens':>6} {'rows':>6} {'lens s':>7} {'peak RSS GB':>11} {'fp32 weights GB':>15} {'peak / weights':>14}")
    for backend, positions, budget in (
        ("bridge", "all", 64), ("bridge", "all", 128), ("bridge", "all", 256), ("bridge", "all", 1024),
        ("bridge", "last", 128), ("hooks", "all", 128),
    ):
        command = [sys.executable, __file__, "--child", "--path", str(path), "--model", args.model, "--backend", backend,
                   "--tokens", str(args.tokens), "--positions", positions, "--budget", str(budget)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        peak = result["peak_rss_bytes"] / 1e9
        weights = result["fp32_weights_bytes"] / 1e9
        print(f"{backend:<8} {positions:<10} {budget:>9} {result['tokens']:>6} {result['rows']:>6} {result['lens_seconds']:>7.1f} {peak:>11.2f} {weights:>15.2f} {peak / weights:>14.2f}")


if __name__ == "__main__":
    main()

"""The lens on llama.cpp (``backend: llamacpp``) against llama.cpp alone and the PyTorch ways.

    .venv/bin/python bench/llamacpp_backend.py [--tokens 16] [--models smollm2-135m-instruct gemma-3-270m llama4-shaped]
        [--layers 16] [--hidden 512]

For each model, CPU, each way in a fresh child process (its peak RSS is the process's):

- llama.cpp alone: ``LlamaCppModel.run`` with no layer captured (the callback asked about
  every graph node and wanting none), each probe's prompt decoded; generation greedy, one
  token per decode, continuing llama.cpp's cache;
- llama.cpp with the lens: the pipeline's ``backend: llamacpp`` with ``weights: quantised``
  (only the lens's head is dequantised; ``read_probes`` on the nine default probes, every
  position; ``LensGenerator``, the lens on every generated token);
- ``weights: quantised``: the PyTorch model built without weights, each module's read from
  the GGUF file and dequantised just before use, the same lens;
- float32 in memory: the file dequantised once (``weights: dequantised``), forward hooks.

"s / probe": the nine probes read (after one warm-up probe), over nine. "tokens / s":
--tokens greedy tokens after the first probe's prompt, the lens on every one. The models:
the embedded ones as they ship (SmolLM2 Q4_1, Gemma 3 Q4_K_M) and bench/gguf_layers.py's
Llama-4-shaped random model (Scout's layout scaled down to --layers x --hidden, Q8_0).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WAYS = ("llama.cpp alone", "llama.cpp with the lens", "weights: quantised", "float32 in memory")


def entry_of(model: str, args) -> dict:
    import yaml

    if model == "llama4-shaped":
        from gguf_layers import build

        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        return {"source": "gguf", "path": str(build(work, args.layers, args.hidden))}
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"][model]


def child(model: str, way: str, args) -> dict:
    """One way on one model, in this process: seconds per probe, tokens per second, peak RSS."""
    import torch
    import yaml

    import workflow  # noqa: F401 (MKL's reproducible mode)
    from workflow.config.settings import LensSettings
    from workflow.gguf.prepare import locate_gguf, prepare_model
    from workflow.lens.generation import LensGenerator
    from workflow.lens.run import read_probes
    from workflow.model.llamacpp import LlamaCppModel
    from workflow.model.load import load_model

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    probes = config["probes"]
    entry = entry_of(model, args)
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as scratch:
        scratch = Path(scratch)
        if way == "llama.cpp alone":
            engine = LlamaCppModel(locate_gguf(model, entry, scratch), key=model)
            ids = [engine.tokenize(p["prompt"]) for p in probes]
            engine.run(ids[0], layers=[])
            started = time.perf_counter()
            for prompt in ids:
                engine.run(prompt, layers=[])
            per_probe = (time.perf_counter() - started) / len(ids)
            engine.reserve(len(ids[0]) + args.tokens)
            started = time.perf_counter()
            logits = engine.run(ids[0], layers=[]).logits[-1]
            length = len(ids[0])
            for _ in range(args.tokens):
                token = int(logits.argmax())
                logits = engine.run([token], layers=[], start=length).logits[-1]
                length += 1
            per_second = args.tokens / (time.perf_counter() - started)
        else:
            # llama.cpp runs the file; the lens's head alone is read from it (weights: quantised).
            weights = "dequantised" if way == "float32 in memory" else "quantised"
            prepared = scratch / "prepared"
            prepare_model(model, {**entry, "weights": weights}, prepared)
            chosen = {"llama.cpp with the lens": "llamacpp", "weights: quantised": "hooks", "float32 in memory": "hooks"}[way]
            loaded = load_model(model, {**entry, "weights": weights, "backend": chosen}, prepared, device="cpu", dtype="float32")
            settings = LensSettings()
            read_probes(loaded, probes[:1], settings)
            started = time.perf_counter()
            read_probes(loaded, probes, settings)
            per_probe = (time.perf_counter() - started) / len(probes)
            prompt = loaded.tokenizer(probes[0]["prompt"])["input_ids"]
            generator = LensGenerator(loaded, LensSettings(positions="last"))
            started = time.perf_counter()
            reply = generator.generate(prompt, max_new_tokens=args.tokens, stop_ids=set())
            per_second = len(reply.tokens) / (time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"per_probe": per_probe, "per_second": per_second, "peak_gb": peak / 1e9, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m", "llama4-shaped"])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--work", default=str(REPO / "resources" / "bench-gguf-layers"))
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    print(f"{platform.processor() or platform.machine()}; nine default probes, {args.tokens} generated tokens\n")
    print("| model | way | s / probe | against llama.cpp alone | tokens / s | against llama.cpp alone | peak RSS (GB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        entry_of(model, args)  # a file to build is built here, not in a measured process
        alone = None
        for way in WAYS:
            command = [sys.executable, __file__, "--child", model, way, "--tokens", str(args.tokens),
                       "--layers", str(args.layers), "--hidden", str(args.hidden), "--work", args.work]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {model} | {way} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode} | | | | |")
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            alone = alone or result
            print(f"| {model} | {way} | {result['per_probe']:.3f} | {result['per_probe'] / alone['per_probe']:.2f}x | "
                  f"{result['per_second']:.1f} | {result['per_second'] / alone['per_second']:.2f}x | {result['peak_gb']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()

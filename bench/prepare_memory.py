"""Peak memory of preparing a GGUF model: whole-model loading against tensor-by-tensor streaming.

    .venv/bin/python bench/prepare_memory.py [--model gemma-3-270m] [--model smollm2-135m-instruct]

Each preparation runs in a fresh child process; its peak RSS (getrusage, Linux) is
reported with that of its own child (the streamed preparation converts the tokenizer and
config in one, workflow/gguf/prepare.py), next to the largest float32 tensor, the float32
model and the process floor: the RSS of the process once the libraries preparation uses
are imported (torch, transformers' model code, gguf), before it reads anything. The
target: the peak of the streamed preparation is at most twice the largest tensor plus
the floor.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def safetensors_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header


def child(args) -> None:
    import gguf  # noqa: F401  (the floor: the libraries preparation uses, imported)
    import torch  # noqa: F401
    import transformers.modeling_gguf_pytorch_utils  # noqa: F401
    import transformers.modeling_utils  # noqa: F401
    import yaml

    from workflow.gguf.prepare import prepare_model

    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    entry = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"][args.model]
    started = time.perf_counter()
    prepare_model(args.model, entry, args.out, whole=args.way == "whole")
    seconds = time.perf_counter() - started
    shapes = [t["shape"] for f in sorted(Path(args.out).glob("*.safetensors")) for t in safetensors_header(f).values()]
    print(json.dumps({
        "parameters": sum(math.prod(s) for s in shapes),
        "largest": max(math.prod(s) for s in shapes) * 4,
        "seconds": round(seconds, 1),
        "floor": floor,
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "child_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="a model key of config/config.yaml (repeatable)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--way", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.model = args.model[0]
        return child(args)
    print("CPU, one fresh process per row; GB = 1e9 bytes; 'child' is the tokenizer/config process of streaming\n")
    print(f"{'model':<24} {'way':<9} {'seconds':>7} {'floor GB':>8} {'peak GB':>7} {'child GB':>8} "
          f"{'largest GB':>10} {'fp32 model GB':>13} {'peak / model':>12} {'bound GB':>8} {'within':>6}")
    for model in args.model or ["gemma-3-270m"]:
        for way in ("whole", "streamed"):
            with tempfile.TemporaryDirectory(prefix="prepare-bench-") as work:
                out = Path(work) / model
                command = [sys.executable, __file__, "--child", "--model", model, "--way", way, "--out", str(out)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(done.stderr[-3000:])
                result = json.loads(done.stdout.strip().splitlines()[-1])
            gb = 1e9
            peak = max(result["peak"], result["child_peak"])
            model_bytes, largest = result["parameters"] * 4, result["largest"]
            bound = 2 * largest + result["floor"]
            print(
                f"{model:<24} {way:<9} {result['seconds']:>7.1f} {result['floor'] / gb:>8.2f} {result['peak'] / gb:>7.2f} "
                f"{result['child_peak'] / gb:>8.2f} {largest / gb:>10.2f} {model_bytes / gb:>13.2f} {peak / model_bytes:>12.2f} "
                f"{bound / gb:>8.2f} {'yes' if peak <= bound else 'no':>6}"
            )


if __name__ == "__main__":
    main()

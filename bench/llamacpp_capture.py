"""The cost of reading the residual stream out of llama.cpp while it decodes.

    .venv/bin/python bench/llamacpp_capture.py [--tokens 128] [--repeats 5] [--threads N] [--models gemma-3-270m ...]

For each embedded model's GGUF file (as users run it, quantised), one prompt of --tokens
tokens decoded from an empty cache, CPU, best of --repeats, the ways interleaved so that a
busy machine slows them alike:

- llama.cpp, last logits: a context without an evaluation callback, the logits of the last
  position only (how a chat's prompt is read);
- llama.cpp, all logits: the same, the logits of every position (what the lens needs: in
  its last block llama.cpp keeps only the rows whose logits are asked for);
- callback, no capture: ``LlamaCppModel.run(ids, layers=[])``, the callback asked about
  every graph node and wanting none;
- capture all layers: ``LlamaCppModel.run(ids)``, the residual stream at every layer and
  position copied out, and the logits of every position;
- patch one layer: every position of the middle layer written (with its own values).

"CPU s" is the process's CPU time for the decode (user and system, best of the repeats):
with one thread it counts the work alone, however busy the machine; with more it also
counts threads spinning at barriers. "max |dlogit|" is the largest difference of the way's logits from llama.cpp's with all
logits (0: the callback changes no number).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from lens_memory import TEXT  # noqa: E402

from workflow.model.llamacpp import LlamaCppModel  # noqa: E402
from workflow.gguf.prepare import locate_gguf  # noqa: E402

WAYS = ("llama.cpp, last logits", "llama.cpp, all logits", "callback, no capture", "capture all layers", "patch one layer")


class Plain:
    """The same file and context size in llama.cpp without an evaluation callback."""

    def __init__(self, model: LlamaCppModel, n_tokens: int):
        import llama_cpp as llama

        self.llama, self.model = llama, model
        params = llama.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = max(64, 1 << (n_tokens - 1).bit_length())
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = model.n_threads
        params.no_perf = True
        self.ctx = llama.llama_init_from_model(model._model, params)

    def run(self, tokens: list[int], every: bool) -> np.ndarray:
        llama, n = self.llama, len(tokens)
        llama.llama_memory_clear(llama.llama_get_memory(self.ctx), True)
        batch = llama.llama_batch_init(n, 0, 1)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = every or i == n - 1
        batch.n_tokens = n
        status = llama.llama_decode(self.ctx, batch)
        llama.llama_batch_free(batch)
        assert status == 0, status
        rows = n if every else 1
        pointer = ctypes.cast(llama.llama_get_logits(self.ctx), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(pointer, shape=(rows, self.model.vocab_size)).copy()

    def close(self) -> None:
        self.llama.llama_free(self.ctx)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prompt(model: LlamaCppModel, tokens: int) -> list[int]:
    ids = model.tokenize(TEXT * 40)[: tokens - 6]
    return (ids + model.tokenize(" The capital of Germany is", add_special=False))[:tokens]


def measure(key: str, args, work: Path) -> list[dict]:
    import yaml

    entry = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"][key]
    model = LlamaCppModel(locate_gguf(key, entry, work), n_threads=args.threads, key=key)
    ids = prompt(model, args.tokens)
    plain = Plain(model, len(ids))
    middle = model.n_layers // 2
    own = model.run(ids, layers=[middle]).layer(middle)
    ways = {
        WAYS[0]: lambda: plain.run(ids, every=False),
        WAYS[1]: lambda: plain.run(ids, every=True),
        WAYS[2]: lambda: model.run(ids, layers=[]).logits,
        WAYS[3]: lambda: model.run(ids).logits,
        WAYS[4]: lambda: model.run(ids, layers=[], patches=[(middle, p, own[p]) for p in range(len(ids))]).logits,
    }
    best = {way: float("inf") for way in ways}
    cpu = dict(best)
    logits = {}
    for _ in range(args.repeats):
        for way, run in ways.items():
            started, used = time.perf_counter(), cpu_seconds()
            logits[way] = run()
            best[way] = min(best[way], time.perf_counter() - started)
            cpu[way] = min(cpu[way], cpu_seconds() - used)
    reference = logits[WAYS[1]]
    rows = []
    for way in ways:
        diff = np.abs(logits[way] - reference[-len(logits[way]):]).max()
        rows.append({"model": key, "way": way, "seconds": best[way], "vs": best[way] / best[WAYS[1]], "cpu": cpu[way],
                     "cpu_vs": cpu[way] / cpu[WAYS[1]], "diff": float(diff),
                     "layers": model.n_layers + 1, "tokens": len(ids)})
    plain.close()
    model.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--models", nargs="+", default=["gemma-3-270m", "smollm2-135m-instruct"])
    args = parser.parse_args()
    import llama_cpp

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; llama-cpp-python "
          f"{llama_cpp.__version__}, CPU")
    print(f"prompt: {args.tokens} tokens from an empty cache; best of {args.repeats}\n")
    print("| model | way | seconds | vs all logits | CPU s | vs all logits | max abs(dlogit) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as work:
        for key in args.models:
            for row in measure(key, args, Path(work)):
                print(f"| {row['model']} ({row['layers']} layers) | {row['way']} | {row['seconds']:.3f} | {row['vs']:.2f} | "
                      f"{row['cpu']:.3f} | {row['cpu_vs']:.2f} | {row['diff']:.2g} |")


if __name__ == "__main__":
    main()

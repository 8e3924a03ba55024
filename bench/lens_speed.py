"""Lens speed: our lens stage against this machine's matmul rate and against the peers.

    make bench            # prepares the models if needed, installs the peers, runs everything
    .venv/bin/python bench/lens_speed.py [--tokens 128] [--repeats 3] [--models smollm2-135m-instruct gemma-3-270m]

For each embedded model, one prompt of --tokens tokens, every layer and position,
CPU, float32, each method in a fresh child process (its own peak RSS), timed from
"model loaded" to "statistics for every layer and position in hand", best of --repeats:

- ours: ``workflow.lens.run.read_probes`` (forward pass with hooks, identity check,
  streamed unembedding and every recorded statistic), with the fused CPU kernel;
- ours-torch: the same with ``LAYERWISE_LENS_KERNEL=torch`` (the path taken where no C
  compiler is found, and on GPUs);
- tuned-lens: ``PredictionTrajectory.from_lens_and_model`` with its ``LogitLens``
  (forward pass with all hidden states, then final norm, unembedding and log-softmax
  per layer, kept as one [layers, positions, vocab] array); its statistics are then
  read off that array outside the timed part, which favours it;
- transformer-lens: the straightforward TransformerLens 4 way on the same
  TransformerBridge: ``run_with_cache``, then ``ln_final`` and ``unembed`` per layer,
  log-softmax, top-k, entropy and the answer's probability.

Lens throughput is the unembedding work (layers x positions x vocab x d_model x 2 FLOPs)
over our measured time, as a fraction of the float32 matmul rate measured in the same
run, both for a large square matrix product (the machine's peak) and for a product of
the unembedding's own shape. "max |dp|" is the largest difference of a peer's
probabilities (top-5 and answer, at every layer and position) from ours, and "vs
float64" from the same lens computed in float64 on our captured residuals (untimed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from lens_memory import TEXT, prepared_dir  # noqa: E402

METHODS = ("ours", "ours-torch", "tuned-lens", "transformer-lens")
REFERENCE = "float64"  # the same lens in float64 arithmetic on our residuals: exact to ~1e-12
TOP_K = 5


def prompt_ids(tokenizer, tokens: int) -> list[int]:
    body = tokenizer(TEXT * 40, add_special_tokens=False)["input_ids"]
    tail = tokenizer(" The capital of Germany is", add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and "gemma" in tokenizer.name_or_path.lower() else []
    return bos + body[: tokens - len(tail) - len(bos)] + tail


def best_of(repeats: int, run):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def worker(args) -> None:
    import numpy as np
    import torch

    torch.manual_seed(0)
    path = str(prepared_dir(args.model))
    out: dict = {"method": args.method, "model": args.model}
    if args.method in ("ours", "ours-torch"):  # the second with LAYERWISE_LENS_KERNEL=torch
        from workflow.config.settings import LensSettings
        from workflow.lens.run import read_probes
        from workflow.model.load import load_model

        model = load_model(args.model, {"source": "local", "path": path}, None, device="cpu", dtype="float32", backend="bridge")
        ids = prompt_ids(model.tokenizer, args.tokens)
        probe = {"id": "bench", "prompt": model.tokenizer.decode(ids), "answer": " Berlin"}
        settings = LensSettings(top_k=TOP_K)
        seconds, read = best_of(args.repeats, lambda: read_probes(model, [probe], settings))
        rows = read.rows
        n_pos = len(read.probes[0]["input_ids"])
        n_layers = model.n_layers + 1
        grid = np.zeros((n_layers, n_pos, TOP_K)), np.zeros((n_layers, n_pos))
        for row in rows:
            grid[0][row["layer"], row["position"]] = row["topk_probs"]
            grid[1][row["layer"], row["position"]] = row["answer_prob"]
        from workflow.lens.readout import uses_kernel
        from workflow.model.logit_steps import logit_postprocessor

        out["kernel"] = "native" if uses_kernel(logit_postprocessor(model.hf_config), "cpu") else "torch"
        out.update(seconds=seconds, layers=n_layers, positions=n_pos, vocab=int(model.backend.unembed.original_component.weight.shape[0]),
                   d_model=model.d_model, answer=read.probes[0]["answer_token_id"],
                   input_ids=read.probes[0]["input_ids"])
        np.savez(args.arrays, topk=grid[0], answer=grid[1])
    elif args.method == "tuned-lens":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        input_ids = json.loads(args.input_ids)
        # tuned-lens 0.2.0 imports TransformerLens's HookedTransformer when TransformerLens
        # is installed, and TransformerLens 4 removed it: hide TransformerLens from it.
        sys.modules["transformer_lens"] = None  # type: ignore[assignment]
        try:
            from tuned_lens.nn.lenses import LogitLens
            from tuned_lens.plotting import PredictionTrajectory

            lens = LogitLens.from_model(model)
        except Exception as error:  # e.g. "Unknown model type" for architectures it does not list
            out.update(error=f"{type(error).__name__}: {str(error).splitlines()[0]}")
        else:
            seconds, trajectory = best_of(
                args.repeats, lambda: PredictionTrajectory.from_lens_and_model(lens, model, input_ids, tokenizer)
            )
            log_probs = torch.from_numpy(trajectory.log_probs)  # [layers, positions, vocab]
            top = log_probs.topk(TOP_K, dim=-1).values.exp()
            np.savez(args.arrays, topk=top.numpy(), answer=log_probs[..., args.answer].exp().numpy())
            out.update(seconds=seconds)
    elif args.method == REFERENCE:
        from workflow.config.settings import LensSettings
        from workflow.lens.session import lens_heads
        from workflow.model.load import load_model

        model = load_model(args.model, {"source": "local", "path": path}, None, device="cpu", dtype="float32", backend="bridge")
        residuals, _ = model.backend.capture(json.loads(args.input_ids), "all")
        _, head = lens_heads(model, LensSettings())
        weight = head.linear()[0].double()
        tops, answers = [], []
        with torch.no_grad():
            for layer in range(residuals.shape[0]):
                log_probs = (head.normed(residuals[layer]).double() @ weight.T).log_softmax(-1)
                tops.append(log_probs.topk(TOP_K, dim=-1).values.exp())
                answers.append(log_probs[:, args.answer].exp())
        np.savez(args.arrays, topk=torch.stack(tops).numpy(), answer=torch.stack(answers).numpy())
        out.update(seconds=float("nan"))
    else:
        from workflow.model.load import load_model

        model = load_model(args.model, {"source": "local", "path": path}, None, device="cpu", dtype="float32", backend="bridge")
        bridge = model.backend.bridge
        tokens = torch.tensor([json.loads(args.input_ids)])

        def straightforward():
            with torch.no_grad():
                _, cache = bridge.run_with_cache(tokens)
                hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)]
                tops, answers, entropies = [], [], []
                for index, name in enumerate(hooks):
                    resid = cache[name][0]
                    # The last layer's output already went through the final norm inside
                    # the model's own forward; the cache holds the block output, so every
                    # layer goes through ln_final here.
                    log_probs = bridge.unembed(bridge.ln_final(resid)).float().log_softmax(-1)
                    tops.append(log_probs.topk(TOP_K, dim=-1).values.exp())
                    answers.append(log_probs[:, args.answer].exp())
                    entropies.append(-(log_probs.exp() * log_probs).sum(-1))
                return torch.stack(tops), torch.stack(answers)

        seconds, (top, answer) = best_of(args.repeats, straightforward)
        np.savez(args.arrays, topk=top.numpy(), answer=answer.numpy())
        out.update(seconds=seconds)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print("RESULT " + json.dumps(out))


def run_worker(method: str, model: str, args, extra: dict) -> dict:
    arrays = Path(args.workdir) / f"{model}-{method}.npz"
    command = [sys.executable, __file__, "--worker", method, "--model", model, "--tokens", str(args.tokens),
               "--repeats", str(args.repeats), "--arrays", str(arrays)]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if method == "ours-torch":
        env["LAYERWISE_LENS_KERNEL"] = "torch"
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        return {"method": method, "model": model, "error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    found = json.loads(lines[-1][len("RESULT "):])
    found["arrays"] = str(arrays)
    return found


def matmul_rate(m: int, k: int, n: int, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    seconds, _ = best_of(repeats, lambda: a @ b)
    return 2 * m * k * n / seconds


def ours_label(result: dict) -> str:
    return "ours (fused kernel)" if result["kernel"] == "native" else "ours (torch path)"


def max_difference(ours: dict, peer: dict) -> float:
    import numpy as np

    a, b = np.load(ours["arrays"]), np.load(peer["arrays"])
    return float(max(np.abs(a["topk"] - b["topk"]).max(), np.abs(a["answer"] - b["answer"]).max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/lens-speed")
    parser.add_argument("--worker", choices=METHODS + (REFERENCE,))
    parser.add_argument("--model")
    parser.add_argument("--arrays")
    parser.add_argument("--input-ids")
    parser.add_argument("--answer", type=int)
    args = parser.parse_args()
    if args.worker:
        args.method = args.worker
        worker(args)
        return
    import torch

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    peak = matmul_rate(2048, 2048, 2048)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; float32 matmul 2048^3: {peak / 1e9:.0f} GFLOP/s")
    print(f"prompt: {args.tokens} tokens, all positions, every layer, CPU float32; best of {args.repeats}\n")
    print("| model | method | lens time (s) | vs ours | peak RSS (GB) | vs ours | max abs(dp) vs ours | max abs(dp) vs float64 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    throughput, alternatives = [], {}
    for model in args.models:
        ours = run_worker("ours", model, args, {})
        if "error" in ours:
            print(f"| {model} | ours | failed: {ours['error']} | | | | | |")
            continue
        shared = {"input_ids": json.dumps(ours["input_ids"]), "answer": ours["answer"]}
        exact = run_worker(REFERENCE, model, args, shared)
        print(f"| {model} | {ours_label(ours)} | {ours['seconds']:.2f} | 1.00 | {ours['peak_rss_gb']:.2f} | 1.00 | 0 | {max_difference(exact, ours):.1g} |")
        for method in METHODS[1:]:
            peer = run_worker(method, model, args, shared)
            if "error" in peer:
                print(f"| {model} | {method} | fails: {peer['error'][:90]} | | | | | |")
                continue
            label = ours_label(peer) if method == "ours-torch" else method
            if method == "ours-torch":
                alternatives[model] = (label, peer)
            print(f"| {model} | {label} | {peer['seconds']:.2f} | {peer['seconds'] / ours['seconds']:.2f} | "
                  f"{peer['peak_rss_gb']:.2f} | {peer['peak_rss_gb'] / ours['peak_rss_gb']:.2f} | {max_difference(ours, peer):.2g} | "
                  f"{max_difference(exact, peer):.2g} |")
        flops = 2 * ours["layers"] * ours["positions"] * ours["vocab"] * ours["d_model"]
        shaped = matmul_rate((ours["layers"] + 1) * ours["positions"], ours["d_model"], 4096)
        throughput.append((model, ours_label(ours), ours, flops, shaped))
        if model in alternatives:
            throughput.append((model, *alternatives[model], flops, shaped))
    print("\n| model | method | layers x positions x vocab x d_model | unembedding GFLOP | lens time (s) | GFLOP/s | of peak matmul | of same-shape matmul |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, label, ours, flops, shaped in throughput:
        rate = flops / ours["seconds"]
        print(f"| {model} | {label} | {ours['layers']} x {ours['positions']} x {ours['vocab']} x {ours['d_model']} | {flops / 1e9:.0f} | "
              f"{ours['seconds']:.2f} | {rate / 1e9:.0f} | {rate / peak:.0%} | {rate / shaped:.0%} |")


if __name__ == "__main__":
    main()

"""The streamed lens on a GPU (or any device) against float64, with timings.

    .venv/bin/python bench/lens_device.py [--device cuda] [--settings float32 bfloat16 bfloat16-head]

A Gemma-3-270m-sized problem built in memory (262,144-token vocabulary, d_model 640,
19 layers x 129 positions, an RMSNorm head, random weights scaled like a trained
unembedding), so it needs nothing but torch and this repository. For each setting (model
dtype, and whether the head runs in float32 as the config's ``use_fp32_unembed`` says): the
lens stage (``lens_statistics``, every statistic of every row) timed on the device, best of
--repeats, and its largest differences from the same lens in float64 on the same inputs
(probabilities of the top-5 and the answer, entropy, KL to the final layer).
With --device cpu it also shows which CPU path ran (the fused kernel or torch's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow.model.head import LensHead  # noqa: E402
from workflow.lens.readout import lens_statistics, uses_kernel  # noqa: E402
from workflow.model.logit_steps import logit_postprocessor  # noqa: E402

TOP_K = 5


class _Config:  # a config with no post-unembedding steps
    def __getattr__(self, name):
        return None


def problem(layers: int, positions: int, vocab: int, d_model: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, d_model, generator=gen) * 0.05
    # Residual streams whose scale grows with depth, as in trained models; the last layers
    # nearly agree, the first ones not at all.
    base = torch.randn(positions, d_model, generator=gen)
    residuals = torch.stack(
        [(1 + layer) * (base * layer / (layers - 1) + torch.randn(positions, d_model, generator=gen) * (1 - layer / layers)) for layer in range(layers)]
    )
    norm = torch.nn.RMSNorm(d_model, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(d_model, generator=gen))
    return weight, residuals, norm


def reference(head: LensHead, resid: torch.Tensor, answer: int, device: str) -> dict[str, torch.Tensor]:
    """The same lens in float64 on the same inputs: the head's own norm and weights as stored
    (so only the lens's arithmetic differs), whole rows, one layer at a time."""
    import copy

    w = head.unembed.weight.to(device, torch.float64)
    with torch.no_grad():
        normed = copy.deepcopy(head.norm).to(device, torch.float64)(resid.to(device, torch.float64))
        final_lp = (normed[-1] @ w.T).log_softmax(-1)
        out: dict[str, list] = {"top": [], "answer": [], "entropy": [], "kl": []}
        for layer in range(normed.shape[0]):
            lp = (normed[layer] @ w.T).log_softmax(-1)
            out["top"].append(lp.topk(TOP_K, dim=-1).values.exp().cpu())
            out["answer"].append(lp[:, answer].exp().cpu())
            out["entropy"].append(-(lp.exp() * lp).sum(-1).cpu())
            out["kl"].append((final_lp.exp() * (final_lp - lp)).sum(-1).clamp_min(0).cpu())
    return {key: torch.stack(value) for key, value in out.items()}


# (label, model dtype, use_fp32_unembed): the config's default keeps the head in float32.
SETTINGS = {
    "float32": ("float32", torch.float32, True),
    "bfloat16": ("bfloat16 model, float32 head (default)", torch.bfloat16, True),
    "bfloat16-head": ("bfloat16 model and head (use_fp32_unembed: false)", torch.bfloat16, False),
}


def build(weight, residuals, norm, device, dtype, use_fp32_unembed):
    unembed = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        unembed.weight.copy_(weight)
    model_norm = torch.nn.RMSNorm(weight.shape[1], eps=1e-6)
    model_norm.load_state_dict(norm.state_dict())
    head = LensHead.from_modules(model_norm.to(device, dtype), unembed.to(device, dtype), logit_postprocessor(_Config()), dtype, True, use_fp32_unembed)
    return head, residuals.to(device, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--layers", type=int, default=19)
    parser.add_argument("--positions", type=int, default=129)
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--d-model", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--working-memory-mb", type=int, default=128)
    args = parser.parse_args()
    weight, residuals, norm = problem(args.layers, args.positions, args.vocab, args.d_model)
    answer = 12345 % args.vocab
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    flops = 2 * args.layers * args.positions * args.vocab * args.d_model
    print(f"device: {name}; torch {torch.__version__}")
    print(f"problem: {args.layers} layers x {args.positions} positions x {args.vocab} vocab x {args.d_model} d_model "
          f"({flops / 1e9:.0f} GFLOP of unembedding); best of {args.repeats}\n")
    print("| setting | path | lens time (s) | GFLOP/s | max abs(dp) | max abs(d entropy) | max abs(d KL) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for setting in args.settings:
        label, dtype, use_fp32_unembed = SETTINGS[setting]
        head, resid = build(weight, residuals, norm, args.device, dtype, use_fp32_unembed)
        exact = reference(head, resid, answer, args.device)
        path = "fused CPU kernel" if uses_kernel(head.postprocess, args.device) else "torch"

        def once():
            found = list(lens_statistics(resid, head, head, answer, TOP_K, args.vocab, args.working_memory_mb))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return found

        rows = once()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            rows = once()
            best = min(best, time.perf_counter() - started)
        top = torch.zeros_like(exact["top"])
        got = {key: torch.zeros_like(exact[key]) for key in ("answer", "entropy", "kl")}
        for row in rows:
            top[row.layer, row.position] = torch.tensor(row.topk_probs, dtype=torch.float64)
            got["answer"][row.layer, row.position] = row.answer_prob
            got["entropy"][row.layer, row.position] = row.entropy
            got["kl"][row.layer, row.position] = row.kl_to_final
        dp = max((top - exact["top"]).abs().max().item(), (got["answer"] - exact["answer"]).abs().max().item())
        dh = (got["entropy"] - exact["entropy"]).abs().max().item()
        dkl = (got["kl"] - exact["kl"]).abs().max().item()
        print(f"| {label} | {path} | {best:.3f} | {flops / best / 1e9:.0f} | {dp:.1g} | {dh:.1g} | {dkl:.1g} |")


if __name__ == "__main__":
    main()

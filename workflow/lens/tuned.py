"""The tuned lens (Belrose et al. 2023), trained offline for any model the pipeline runs.

One affine translator per layer, applied residually before the model's own final norm
and unembedding: h -> h + A_l h + b_l (with A_l and b_l zero, the lens is exactly the
logit lens). Fitting has two steps, on residuals of the shipped corpus
(data/corpus.txt.gz) recorded once from the model: first, in closed form, the affine map
that best predicts the last layer's residual from layer l's by least squares (ridge),
each position weighted by the scale the final norm removes (the "linear shortcut" of Din
et al. 2023); then a few Adam steps on the tuned lens's own loss, KL(final || lens)
summed over layers. The last layer has no translator (the lens there is the model's
output).

A trained lens is a directory: ``translators.safetensors`` (A: [L, d, d], b: [L, d]),
``config.json`` (the model, the sha256 of its unembedding and final norm, the training
settings, the corpus's sha256, held-out figures) and ``training-log.csv`` (the loss
curve). Loading checks the unembedding hash: a lens trained for other weights is refused.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from workflow.base.atomic import atomic_directory, dumps_json
from workflow.base.errors import UserError
from workflow.model.head import LensHead, head_state
from workflow.lens.readout import EXP_FLOOR, lens_statistics
from workflow.config.settings import WORKING_MEMORY_MB

log = logging.getLogger(__name__)

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus.txt.gz"
DOCUMENT_SEPARATOR = "\n\n\f\n\n"
HELDOUT_EVERY = 10  # document i is held out when i % 10 == 0; never trained on
WEIGHTS, CONFIG, TRAINING_LOG = "translators.safetensors", "config.json", "training-log.csv"


@dataclass(frozen=True)
class TunedLensSettings:
    steps: int = 8
    batch_positions: int = 32
    seq_len: int = 128
    train_sequences: int = 48
    heldout_positions: int = 256
    learning_rate: float = 1e-3
    ridge: float = 1e-3
    seed: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TunedLensSettings:
        return cls(**{k: config[k] for k in cls.__dataclass_fields__ if k in config})


class TunedLens(torch.nn.Module):
    """Translators for layers 0..L-1; layer L passes through unchanged."""

    final_is_identity = True  # lens_statistics may decode the last layer once for both uses

    def __init__(self, n_layers: int, d_model: int):
        super().__init__()
        self.n_layers = n_layers
        self.weight = torch.nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias = torch.nn.Parameter(torch.zeros(n_layers, d_model))

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        if layer >= self.n_layers:
            return hidden
        weight, bias = self.weight[layer], self.bias[layer]
        return hidden + (hidden.to(weight.dtype) @ weight.T + bias).to(hidden.dtype)

    def block(self, hidden: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Layers first..last-1 of ``hidden`` [B, layers, d] translated at once: [layers, B, d].

        One batched product, so training does not build a zero gradient of every layer's
        matrix for each layer (what indexing a stacked parameter layer by layer costs).
        """
        h = hidden.transpose(0, 1)
        return h + torch.baddbmm(self.bias[first:last, None, :], h, self.weight[first:last].transpose(1, 2))


def unembedding_sha256(head: LensHead) -> str:
    """What a trained lens is valid for: the final norm's and unembedding's parameters."""
    digest = hashlib.sha256()
    modules = [m for m in (head.norm, head.unembed) if m is not None]
    for module in modules:
        for name, tensor in sorted(head_state(module).items()):
            digest.update(name.encode() + b"\0")
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def corpus_documents(path: str | os.PathLike[str] = CORPUS) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents) of the corpus."""
    documents = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split(DOCUMENT_SEPARATOR)
    train = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY]
    heldout = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY == 0]
    return train, heldout


def sequences(tokenizer, documents: list[str], seq_len: int, count: int) -> list[list[int]]:
    """``count`` token sequences of ``seq_len``, the documents concatenated in order.

    Each sequence starts as the tokenizer starts a prompt (with BOS where it adds one),
    so the residuals look like those of the probes.
    """
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    body = seq_len - len(prefix)
    for document in documents:
        stream += tokenizer(document, add_special_tokens=False)["input_ids"] + separator
        if len(stream) >= body * count:
            break
    found = [prefix + stream[i : i + body] for i in range(0, min(len(stream), body * count) - body + 1, body)]
    if not found:
        raise UserError(
            f"config key tuned_lens.seq_len: the training text holds {len(stream):,} tokens for this tokenizer, fewer than "
            f"one sequence of {seq_len:,}; lower tuned_lens.seq_len"
        )
    return found


@torch.no_grad()
def collect_residuals(model, token_sequences: list[list[int]]) -> torch.Tensor:
    """Residuals [positions, L+1, d] of every sequence, the first position of each left out."""
    gathered = []
    for ids in token_sequences:
        residuals, _ = model.backend.capture(ids, "all")  # [L+1, T, d]
        gathered.append(residuals[:, 1:].transpose(0, 1).float().cpu())
    return torch.cat(gathered)


def _logits(head: LensHead, hidden: torch.Tensor) -> torch.Tensor:
    """The head with gradients (LensHead.logits is for inference)."""
    h = hidden.to(head.compute_dtype)
    if head.norm is not None:
        h = head.norm(h)
    return head.postprocess(head.unembed(h)).float()


def logsumexp(z: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dimension, exp() arguments clamped at EXP_FLOOR.

    PyTorch's vectorised exp takes a slow path below about -87 (40x on x86), where most
    of a vocabulary lies relative to its maximum; those terms are below 1e-38 and their
    gradient (their softmax probability) as good as zero.
    """
    top = z.amax(-1, keepdim=True).detach()
    return top.squeeze(-1) + torch.exp((z - top).clamp_min(EXP_FLOOR)).sum(-1).log()


# Rows (a layer at a position) whose full-vocabulary logits go through one matrix product
# and one backward pass; bounds training memory to a few times rows x vocab x 4 bytes.
TRAIN_BLOCK_CELLS = 2**25
LAYER_SCALE_REFERENCE = 5.0  # nats
LAYER_SCALE_MIN = 0.05


def least_squares(residuals: torch.Tensor, ridge: float = 1e-3) -> TunedLens:
    """Per layer l, the affine map with h_l + A h_l + b closest to the last layer's h_L.

    ``residuals`` [N, L+1, d]. Each position's equation is divided by the root mean square
    of its h_L: the final norm removes that scale, so every position counts alike in what
    the lens decodes. Solved in float64 from the normal equations, with ``ridge`` times
    the mean diagonal of the Gram matrix added to it.
    """
    n, layers_plus_one, d_model = residuals.shape
    if ridge == 0 and n <= d_model:
        raise UserError(
            f"the tuned lens's least-squares fit has {n} training positions, fewer training positions than the "
            f"model's width ({d_model}) plus one, and no ridge term: it is undetermined. Raise tuned_lens.ridge above 0 "
            "or train on more text (tuned_lens.train_sequences, seq_len) in config/config.yaml"
        )
    lens = TunedLens(layers_plus_one - 1, d_model)
    target = residuals[:, -1].double()
    scale = target.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    ones = torch.ones(n, 1, dtype=torch.float64)
    with torch.no_grad():
        for layer in range(layers_plus_one - 1):
            x = residuals[:, layer].double()
            design = torch.cat([x, ones], 1) / scale
            gram = design.T @ design
            gram += ridge * gram.diagonal().mean() * torch.eye(d_model + 1, dtype=torch.float64)
            solution = _solve_single_threaded(gram, design.T @ ((target - x) / scale))  # [d + 1, d]
            lens.weight[layer] = solution[:-1].T.float()
            lens.bias[layer] = solution[-1].float()
    return lens


def _solve_single_threaded(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``solve(matrix, rhs)`` on one thread: LAPACK's threaded factorisation gave other
    last bits at 2 threads than at 1 (and so another lens); for a system of the model's
    width this costs milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.solve(matrix, rhs)
    finally:
        torch.set_num_threads(threads)


def train(head: LensHead, residuals: torch.Tensor, settings: TunedLensSettings, progress=None) -> tuple[TunedLens, list[dict[str, float]]]:
    """Fit the translators on ``residuals`` [N, L+1, d]; returns the lens and the loss per step.

    Starts from ``least_squares``, then takes ``settings.steps`` Adam steps on the loss:
    the sum over layers of the mean KL(final || lens) over the sampled positions;
    KL = sum p (log p - z) + logsumexp(z), whose gradient in the logits z is
    softmax(z) - p. All layers go through the unembedding together, in blocks of rows,
    so the matrix products are large enough to be efficient.
    """
    # Kept as one function: one optimisation loop, its sampling, loss and progress sharing the
    # generator's state; the closed-form start is ``least_squares``.
    n, layers_plus_one, d_model = residuals.shape
    n_layers = layers_plus_one - 1
    generator = torch.Generator().manual_seed(settings.seed)
    lens = least_squares(residuals, settings.ridge)
    for module in (head.norm, head.unembed):
        if module is not None:
            module.requires_grad_(False)
    vocab = head.linear()[0].shape[0] if head.linear() is not None else 50_000
    layers_per_block = max(1, min(n_layers, TRAIN_BLOCK_CELLS // (vocab * settings.batch_positions)))

    def step_loss(batch: torch.Tensor, backward: bool) -> torch.Tensor:
        """Mean KL per layer [L] of one batch; gradients accumulate when ``backward``."""
        with torch.no_grad():
            final_z = _logits(head, batch[:, n_layers])
            final = final_z - logsumexp(final_z)[:, None]
            final_p = final.clamp_min(EXP_FLOOR).exp()
            final_entropy_term = (final_p * final).sum(-1)  # sum p log p, per position
        per_layer = []
        for l0 in range(0, n_layers, layers_per_block):
            l1 = min(n_layers, l0 + layers_per_block)
            with torch.set_grad_enabled(backward):
                translated = lens.block(batch[:, l0:l1], l0, l1).reshape((l1 - l0) * settings.batch_positions, d_model)
                z = _logits(head, translated).view(l1 - l0, settings.batch_positions, -1)
                kl = (final_entropy_term - (final_p * z).sum(-1) + logsumexp(z)).mean(-1)  # [layers]
                if backward:
                    kl.sum().backward()
            per_layer.append(kl.detach())
        return torch.cat(per_layer)

    def sample() -> torch.Tensor:
        return residuals[torch.randint(0, n, (settings.batch_positions,), generator=generator)]

    # Adam, with each layer's step scaled by how far the lens is from the output at the
    # start (KL of the first batch, over LAYER_SCALE_REFERENCE nats counts as far), and
    # decayed linearly to zero. Plain Adam moves every layer by the same amount whatever
    # its loss, which on few, small batches leaves the layers that are already close at a
    # noisier point than where they started.
    moments = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in lens.named_parameters()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    history = []
    layer_scale = None
    for step in range(1, settings.steps + 1):
        lens.zero_grad(set_to_none=True)
        per_layer = step_loss(sample(), backward=True)
        if layer_scale is None:
            layer_scale = (per_layer / LAYER_SCALE_REFERENCE).clamp(LAYER_SCALE_MIN, 1.0)
        total = float(per_layer.sum())
        rate = settings.learning_rate * (1.0 - (step - 1) / settings.steps)
        with torch.no_grad():
            for name, param in lens.named_parameters():
                first, second = moments[name]
                first.mul_(beta1).add_(param.grad, alpha=1 - beta1)
                second.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                update = (first / (1 - beta1**step)) / ((second / (1 - beta2**step)).sqrt() + eps)
                scale = layer_scale.view(-1, *([1] * (param.dim() - 1)))
                param.sub_(rate * scale * update)
        history.append({"step": step, "mean_kl": total / n_layers})
        if progress is not None:
            progress(step, settings.steps, total / n_layers)
    return lens, history


def lens_quality(head: LensHead, residuals: torch.Tensor, lens: TunedLens | None, working_memory_mb: int = WORKING_MEMORY_MB) -> list[dict[str, Any]]:
    """Per layer: mean KL to the final distribution and top-1 agreement with the final layer.

    ``residuals`` [N, L+1, d] of held-out text; ``lens`` None gives the logit lens.
    """
    stacked = residuals.transpose(0, 1)  # [L+1, N, d]: positions play the role of positions
    rows = list(lens_statistics(stacked, head, head, 0, 1, 0, working_memory_mb, lens))
    n_layers_plus_one = stacked.shape[0]
    final_top1 = {r.position: r.topk_ids[0] for r in rows if r.layer == n_layers_plus_one - 1}
    out = []
    for layer in range(n_layers_plus_one):
        mine = [r for r in rows if r.layer == layer]
        out.append({
            "layer": layer,
            "kl_to_final": sum(r.kl_to_final for r in mine) / len(mine),
            "top1_agreement": sum(r.topk_ids[0] == final_top1[r.position] for r in mine) / len(mine),
        })
    return out


def save(lens: TunedLens, directory: str | os.PathLike[str], config: dict[str, Any], history: list[dict[str, float]]) -> None:
    """Write the lens directory atomically (all three files or none)."""
    from safetensors.torch import save_file

    with atomic_directory(directory) as tmp:
        save_file({"weight": lens.weight.detach().contiguous(), "bias": lens.bias.detach().contiguous()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(dumps_json(config), encoding="utf-8")
        with open(tmp / TRAINING_LOG, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", "mean_kl"])
            writer.writeheader()
            writer.writerows(history)


def load(directory: str | os.PathLike[str], head: LensHead, model_key: str) -> tuple[TunedLens, dict[str, Any]]:
    """A trained lens for ``head``'s weights; refuses one trained for other weights."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise UserError(f"{directory}: no trained tuned lens here (expected {CONFIG} and {WEIGHTS}); "
                        "run the train_tuned_lens rule for this model first")
    config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    expected = unembedding_sha256(head)
    if config.get("unembedding_sha256") != expected:
        raise UserError(
            f"{directory}: this tuned lens was trained for {config.get('model')!r} with unembedding sha256 "
            f"{str(config.get('unembedding_sha256'))[:12]}, but model {model_key!r} has {expected[:12]}; "
            "a lens only fits the weights it was trained on. Retrain it (delete the directory and run "
            "snakemake again, which plans train_tuned_lens)."
        )
    tensors = load_file(str(directory / WEIGHTS))
    lens = TunedLens(tensors["weight"].shape[0], tensors["weight"].shape[1])
    with torch.no_grad():
        lens.weight.copy_(tensors["weight"])
        lens.bias.copy_(tensors["bias"])
    lens.requires_grad_(False)
    return lens, config


def corpus_sha256(path: str | os.PathLike[str] = CORPUS) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def training_config(model_key: str, head: LensHead, settings: TunedLensSettings, n_train: int, quality: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model_key,
        "unembedding_sha256": unembedding_sha256(head),
        "settings": asdict(settings),
        "corpus": {"path": "data/corpus.txt.gz", "sha256": corpus_sha256(), "heldout": f"documents i with i % {HELDOUT_EVERY} == 0"},
        "train_positions": n_train,
        "heldout": quality,
        "lens": "h + A h + b per layer (tuned lens, Belrose et al. 2023): least squares to the last layer's residual, then KL steps",
    }


def describe(history: list[dict[str, float]]) -> str:
    if not history:
        return "least squares only (no KL steps)"
    first, last = history[0]["mean_kl"], history[-1]["mean_kl"]
    return f"least squares, then mean KL per layer {first:.3f} -> {last:.3f} nats over {len(history)} steps"


QUALITY_COLUMNS = ["model", "lens", "layer", "kl_to_final", "top1_agreement", "positions"]


def quality_rows(model_key: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The lens-quality CSV rows of a trained lens's held-out figures."""
    held = config["heldout"]
    return [
        {"model": model_key, "lens": lens, "layer": row["layer"], "kl_to_final": row["kl_to_final"],
         "top1_agreement": row["top1_agreement"], "positions": held["positions"]}
        for lens in ("logit", "tuned")
        for row in held[lens]
    ]

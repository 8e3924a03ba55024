"""Setting up a lens on a loaded model, for any experiment: the lens settings from the
config, the two heads (the recorded lens and the model-faithful reference), tokenising
a probe, the identity check (the lens at the last layer against the model's own
logits), and the model metadata every experiment's JSON records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from workflow.errors import UserError
from workflow.lens import LensHead, logit_postprocessor, logit_steps, uses_kernel
from workflow.models import LoadedModel, dtype_name
from workflow.provenance import package_versions

# positions: auto records every position of a probe set up to this size, the last beyond.
AUTO_ALL_POSITIONS = 64
HALF_TOLERANCE = 2e-2
FLOAT32_TOLERANCE = 1e-4


class LensIdentityError(RuntimeError):
    """The lens at the last layer does not reproduce the model's own output."""


@dataclass(frozen=True)
class LensSettings:
    use_norm_lens: bool = True
    use_fp32_unembed: bool = True
    positions: str = "all"
    top_k: int = 5
    identity_tolerance: float | None = None
    working_memory_mb: int = 128

    @classmethod
    def from_config(cls, lens: dict[str, Any]) -> LensSettings:
        known = {k: lens[k] for k in cls.__dataclass_fields__ if k in lens}
        return cls(**known)

    def for_probes(self, n_probes: int) -> LensSettings:
        """These settings with ``positions: auto`` resolved: all positions for up to
        AUTO_ALL_POSITIONS probes, the last one for more."""
        if self.positions != "auto":
            return self
        return replace(self, positions="all" if n_probes <= AUTO_ALL_POSITIONS else "last")

    def tolerance(self, dtype: torch.dtype) -> float:
        if self.identity_tolerance is not None:
            return float(self.identity_tolerance)
        return FLOAT32_TOLERANCE if dtype == torch.float32 else HALF_TOLERANCE

    def recorded(self) -> dict[str, Any]:
        return {
            "use_norm_lens": self.use_norm_lens,
            "use_fp32_unembed": self.use_fp32_unembed,
            "positions": self.positions,
            "top_k": self.top_k,
        }


class TokenNames:
    """Decodes single token ids to readable strings, caching each once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        name = self.cache.get(token_id)
        if name is None:
            name = self.tokenizer.decode([token_id])
            self.cache[token_id] = name
        return name


def tokenize_probe(tokenizer, probe: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (as the model's tokenizer makes them) and of the answer.

    Per layer the lens follows the answer's first token; the whole answer is scored at the
    last layer, teacher-forced (``answer_logprob`` in experiment 001's JSON)."""
    if not probe["prompt"].strip():
        raise UserError(f"probe {probe['id']!r}: the prompt is empty; give it some text (config key probes)")
    ids = tokenizer(probe["prompt"], add_special_tokens=True)["input_ids"]
    if not ids:
        raise UserError(f"probe {probe['id']!r}: the prompt tokenises to nothing")
    answer_ids = tokenizer(probe["answer"], add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise UserError(f"probe {probe['id']!r}: the answer {probe['answer']!r} tokenises to nothing")
    return list(ids), [int(i) for i in answer_ids]


def lens_heads(model: LoadedModel, settings: LensSettings) -> tuple[LensHead, LensHead]:
    """The recorded lens head, and the model-faithful head used for KL and the identity check."""
    backend = model.backend
    postprocess = logit_postprocessor(model.hf_config)
    reference = LensHead.from_modules(
        backend.final_norm, backend.unembed, postprocess, model.dtype, True, settings.use_fp32_unembed
    )
    if settings.use_norm_lens:
        return reference, reference
    return LensHead(None, reference.unembed, postprocess, reference.compute_dtype), reference


def identity_deviation(reference: LensHead, last_layer: torch.Tensor, model_logits: torch.Tensor) -> dict[str, float]:
    """How far the lens at layer L is from the model's own output, on scale-sensitive terms.

    Probabilities alone hide a missed logit scale on a near-uniform distribution (every
    probability is tiny), so the logits are compared too, relative to their size
    (``max_rel_logit_diff``: the largest difference over the largest logit, at least 1),
    and KL(model || lens) in nats.
    """
    return logit_deviation(reference.logits(last_layer), model_logits)


def logit_deviation(lens_logits: torch.Tensor, model_logits: torch.Tensor) -> dict[str, float]:
    """``identity_deviation`` of logits the lens has already computed (a model placed
    across GPUs may hand its logits back from the device of its last module)."""
    lens_logits, model_logits = lens_logits.double(), model_logits.to(lens_logits.device).double()
    model_logp, lens_logp = model_logits.log_softmax(-1), lens_logits.log_softmax(-1)
    largest = float((lens_logits - model_logits).abs().max())
    return {
        "max_abs_logit_diff": largest,
        "max_rel_logit_diff": largest / max(1.0, float(model_logits.abs().max())),
        "max_abs_prob_diff": float((lens_logp.exp() - model_logp.exp()).abs().max()),
        "kl_model_to_lens": max(0.0, float((model_logp.exp() * (model_logp - lens_logp)).sum(-1).max())),
    }


def recorded_deviation(deviation: dict[str, float]) -> dict[str, float]:
    """The identity check as written to the JSON: each measure as the power of ten it stays
    under (0 stays 0). Below the tolerance these are float noise, whose last digits change
    from run to run; written to six digits they made a re-run differ from its record."""
    return {k: (0.0 if v <= 0 else float(f"1e{math.ceil(math.log10(v))}")) for k, v in deviation.items()}


def identity_failure(deviation: dict[str, float], tolerance: float) -> str | None:
    """Which identity measure exceeds ``tolerance`` (None when the lens reproduces the model)."""
    for measure in ("max_rel_logit_diff", "max_abs_prob_diff", "kl_model_to_lens"):
        if not deviation[measure] <= tolerance:  # NaN compares false: it fails
            return measure
    return None


def context_limit(model: LoadedModel) -> int | None:
    """How many positions the model takes (its config's max_position_embeddings, or
    n_positions for GPT-2-like models), or None when the config says nothing."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(model.hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(model: LoadedModel, probe: dict[str, Any], tokens: int, what: str = "its prompt and answer") -> None:
    """Refuse, before any work, a probe that needs more positions than the model has."""
    limit = context_limit(model)
    if limit is not None and tokens > limit:
        raise UserError(
            f"model {model.key!r}, probe {probe['id']!r}: {what} take {tokens} tokens, more than the model's "
            f"{limit} positions (max_position_embeddings): shorten the prompt or leave the probe out"
        )


def check_finite(model: LoadedModel, probe: dict[str, Any], residuals: torch.Tensor) -> None:
    """Stop on a residual stream that is not finite ([L+1, T, d] of one probe), naming the
    first such layer: a damaged file or a device that computes NaN must not be recorded."""
    finite = torch.isfinite(residuals.reshape(residuals.shape[0], -1)).all(-1)
    if bool(finite.all()):
        return
    layer = int((~finite).nonzero()[0])
    raise UserError(
        f"model {model.key!r}, probe {probe['id']!r}: the residual stream is not finite (NaN or infinite) from "
        f"layer {layer} on: the weights are damaged or the device computes non-finite numbers (try dtype: float32). "
        "Nothing was written."
    )


def answer_warnings(tokenizer, probe: dict[str, Any], answer_ids: list[int]) -> list[str]:
    """What a user must know about how the lens follows the answer: the records follow its
    first token only, and an answer written without the space a word takes after the prompt
    starts with a piece of a word."""
    found = []
    answer, prompt = probe["answer"], probe["prompt"]
    first = tokenizer.decode([answer_ids[0]])
    if len(answer_ids) > 1:
        found.append(
            f"the answer {answer!r} is {len(answer_ids)} tokens; the records follow its first token {first!r} "
            "(answer_logprob scores all of them)"
        )
    if answer[:1].isalnum() and prompt[-1:].isalnum():
        found.append(
            f"the answer {answer!r} has no leading space, but the prompt ends in a word: the model would write "
            f"{' ' + answer!r}; the lens follows {first!r} (write the answer with its leading space)"
        )
    return found


def model_metadata(model: LoadedModel) -> dict[str, Any]:
    """What the JSON records about the model and where it ran."""
    config = model.hf_config
    norm = getattr(model.backend.final_norm, "original_component", None) or model.backend.final_norm
    return {
        "model": model.key,
        **model.info,
        "architecture": (config.architectures or [type(model.backend.hf_model).__name__])[0],
        "model_type": config.model_type,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "vocab_size": model.vocab_size,
        "norm_type": type(norm).__name__,
        "final_logit_softcapping": getattr(getattr(config, "text_config", None) or config, "final_logit_softcapping", None),
        # What the lens applies after the unembedding, at every layer (workflow/lens.py, LOGIT_STEPS).
        "logit_steps": [{"key": key, "operation": op, "value": value} for key, op, value in logit_steps(config)],
        "backend": model.backend.name,
        # The streamed lens's passes over each block: the fused CPU kernel or torch's.
        "lens_kernel": "native" if uses_kernel(logit_postprocessor(config), model.device) else "torch",
        "device": model.device,
        "dtype": dtype_name(model.dtype),
        "packages": package_versions(),
    }

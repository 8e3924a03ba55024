"""What architectures do to their logits after the unembedding (soft caps, scales), read
from their config: one table (``LOGIT_STEPS``), and the function the lens applies at every
layer (``logit_postprocessor``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

# What architectures do to logits after the unembedding, read from their config, in the
# order applied: (config key, operation, model types it means this for, or None for any).
# The same key can mean different things: Granite divides by ``logits_scaling`` and
# HyperCLOVAX multiplies by it (MiniCPM3 divides the hidden state by it before its
# bias-free head, which is the same as dividing the logits). A key that a model's config
# has but this table does not apply to its type is named by the identity check's error.
LOGIT_STEPS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("logit_scale", "multiply", None),  # Cohere, Cohere 2
    ("lm_head_multiplier", "multiply", None),  # Falcon-H1
    ("output_multiplier", "multiply", ("muse_glimmer",)),
    ("logits_scaling", "divide", ("granite", "minicpm")),  # Granite family; MiniCPM3 (hidden_size / dim_model_base)
    ("logits_scaling", "multiply", ("hyperclovax",)),
    ("final_logit_softcapping", "softcap", None),  # Gemma 2, 3, 3n, 4, VaultGemma, ...: cap * tanh(z / cap)
    ("logits_soft_cap", "softcap", None),  # RecurrentGemma
    ("output_logit_soft_cap", "softcap", ("xlstm",)),
)
# Config keys that look like a step on the logits (for the identity check's message).
LOGIT_STEP_LIKE = ("logit", "softcap", "soft_cap", "multiplier", "dim_model_base")  # the last: MiniCPM's width scaling
NOT_ON_LOGITS = ("attn", "attention", "router", "init")  # soft caps inside attention or routers, initial values


def _config_value(hf_config, key: str):
    text = getattr(hf_config, "text_config", None)
    for cfg in (text, hf_config):
        value = getattr(cfg, key, None) if cfg is not None else None
        if value is not None:
            return value
    return None


def logit_steps(hf_config) -> list[tuple[str, str, float]]:
    """The post-unembedding steps of this architecture: (config key, operation, value)."""
    text = getattr(hf_config, "text_config", None) or hf_config
    model_type = str(getattr(text, "model_type", None) or getattr(hf_config, "model_type", "") or "")
    steps = []
    for key, operation, types in LOGIT_STEPS:
        if types is not None and not model_type.startswith(types):
            continue
        value = _config_value(hf_config, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append((key, operation, float(value)))
    return steps


def unapplied_logit_keys(hf_config) -> list[str]:
    """Config keys that look like a step on the logits but are not applied (see LOGIT_STEPS)."""
    applied = {key for key, _, _ in logit_steps(hf_config)}
    candidates = [key for key, _, _ in LOGIT_STEPS]  # some are properties, not in to_dict()
    for cfg in (getattr(hf_config, "text_config", None), hf_config):
        if cfg is not None:
            candidates += [k for k in cfg.to_dict() if any(w in k for w in LOGIT_STEP_LIKE) and not any(w in k for w in NOT_ON_LOGITS)]
    found = []
    for key in candidates:
        value = _config_value(hf_config, key)
        if key not in applied and key not in found and isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(key)
    return found


def logit_postprocessor(hf_config) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the architecture does to logits after the unembedding (LOGIT_STEPS).

    The lens applies the same steps at every layer, not only the last.
    """
    steps = logit_steps(hf_config)

    def postprocess(logits: torch.Tensor) -> torch.Tensor:
        for _, operation, value in steps:
            if operation == "multiply":
                logits = logits * value
            elif operation == "divide":
                logits = logits / value
            else:
                logits = torch.tanh(logits / value) * value
        return logits

    postprocess.is_identity = not steps  # type: ignore[attr-defined]
    postprocess.steps = steps  # type: ignore[attr-defined]
    return postprocess


def largest_stretch(steps: list[tuple[str, str, float]]) -> float:
    """How much ``steps`` (``logit_steps``) may stretch a difference between two logits: the
    product of the multipliers and divisors' effects; a soft cap ``c tanh(z / c)`` never
    stretches one (its slope is at most 1). A bound on logits before the steps, times this,
    bounds them after."""
    stretch = 1.0
    for _, operation, value in steps:
        if operation == "multiply":
            stretch *= abs(value)
        elif operation == "divide":
            stretch /= abs(value)
    return stretch

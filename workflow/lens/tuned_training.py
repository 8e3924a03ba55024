"""The tuned-lens training job: load a model, capture its residuals on the shipped corpus,
fit and judge its tuned lens (``workflow.lens.tuned``), save it. Above both the lens run's
set-up (``workflow.lens.session``, which opens a trained lens) and the lens itself, so
neither imports the other's caller."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from workflow.base.errors import UserError
from workflow.config.settings import LensSettings
from workflow.lens.session import context_limit, lens_heads
from workflow.lens.tuned import (
    TunedLensSettings,
    collect_residuals,
    corpus_documents,
    describe,
    lens_quality,
    save,
    sequences,
    train,
    training_config,
)
from workflow.model.load import ModelSpec

log = logging.getLogger(__name__)


def train_for_model(
    spec: ModelSpec,
    out_dir: str | os.PathLike[str],
    settings: TunedLensSettings = TunedLensSettings(),
    lens_settings: LensSettings = LensSettings(),
) -> dict[str, Any]:
    """Train and save the tuned lens of one model; returns its config (held-out figures included)."""
    from tqdm import tqdm

    torch.manual_seed(settings.seed)
    model_key = spec.key
    model = spec.load(lens_settings)
    limit = context_limit(model)
    if limit is not None and settings.seq_len > limit:
        raise UserError(
            f"config key tuned_lens.seq_len: {settings.seq_len:,} tokens per training sequence, more than model {model_key!r} "
            f"takes ({limit:,} positions); lower it to {limit:,} or less"
        )
    head = lens_heads(model, lens_settings).reference
    train_docs, heldout_docs = corpus_documents()
    started = time.perf_counter()
    train_residuals = collect_residuals(model, sequences(model.tokenizer, train_docs, settings.seq_len, settings.train_sequences))
    heldout_count = -(-settings.heldout_positions // (settings.seq_len - 1))
    heldout = collect_residuals(model, sequences(model.tokenizer, heldout_docs, settings.seq_len, heldout_count))
    heldout = heldout[: settings.heldout_positions]
    log.info("%s: residuals of %d training and %d held-out positions (%.1f s)", model_key, len(train_residuals), len(heldout),
             time.perf_counter() - started)
    bar = tqdm(total=settings.steps, desc=f"tuned lens {model_key}", unit="step", mininterval=2.0)

    def progress(step: int, total: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(mean_kl=f"{loss:.3f}")
        if step % max(1, total // 10) == 0 or step == total:
            log.info("step %d/%d: mean KL per layer %.4f nats", step, total, loss)

    lens, history = train(head, train_residuals.to(model.device), settings, progress)
    bar.close()
    lens = lens.to(model.device)
    lens.requires_grad_(False)
    quality = {
        "positions": len(heldout),
        "logit": lens_quality(head, heldout.to(model.device), None, lens_settings.working_memory_mb),
        "tuned": lens_quality(head, heldout.to(model.device), lens, lens_settings.working_memory_mb),
    }
    config = training_config(model_key, head, settings, len(train_residuals), quality)
    config["training"] = {"summary": describe(history)}
    log.info("%s: trained and judged in %.1f s", model_key, time.perf_counter() - started)
    save(lens.cpu(), out_dir, config, history)
    worse = [q["layer"] for q, l in zip(quality["tuned"], quality["logit"]) if q["kl_to_final"] > l["kl_to_final"] + 1e-6]
    log.info("%s: %s; held-out KL tuned vs logit per layer: %s", model_key, describe(history),
             ", ".join(f"{t['kl_to_final']:.2f}/{lg['kl_to_final']:.2f}" for t, lg in zip(quality["tuned"], quality["logit"])))
    if worse:
        log.warning("%s: the tuned lens is worse than the logit lens on held-out text at layers %s; "
                    "train longer or on more text (tuned_lens in config/config.yaml)", model_key, worse)
    return config

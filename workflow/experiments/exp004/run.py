"""Experiment 004's run: which component of each block writes the answer, for every pair of
experiment 002 through one model, written as its JSON and records.

Per pair, on the clean prompt's last position: the direct logit attribution of the
embedding, every block's attention and MLP and every head (``workflow.experiments.exp004.dla``) to the
clean answer, to the model's top competing token and to the corrupted answer, checked to add
up to the model's own logits; the lens read between attention and MLP and after the MLP.
Then every component at every position patched from the clean run into the corrupted one,
exactly (one forward per site) and by attribution patching (AtP, and AtP*'s GradDrop), with
their agreement (``workflow.experiments.exp004.patching``).

``results/004/output-{model}.json``: the model's metadata (as in experiment 001), the
settings, the exactness check, and per pair its prompts, tokens, target tokens, logits and
their attributions to the embedding and the constant terms, the sublayer lens by layer, the
patching baselines and AtP's agreement with exact patching.
``results/004/output-{model}-records.csv``: one row per pair x component x position
(``workflow.experiments.exp004.records.RECORD_COLUMNS``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from workflow.base.errors import UserError
from workflow.config.settings import LensSettings
from workflow.experiments.exp004 import dla, patching
from workflow.experiments.exp004.records import RECORD_COLUMNS, TARGETS
from workflow.lens.job import Outputs, run_model_job
from workflow.lens.pairs import pair_identity, resolved_pairs, tokenise_pair
from workflow.lens.session import TokenNames, check_context
from workflow.model.backends import find_final_norm
from workflow.model.components import Block, ComponentRunner, NotDecomposable
from workflow.model.load import LoadedModel, ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComponentSettings:
    exact: bool = True  # exact component patching, one forward per site (AtP always runs)
    grad_drop: bool = True  # AtP*'s GradDrop: one more backward pass per layer
    batch_size: int = 32  # patched runs per forward pass
    top_k: int = 10  # sites compared between AtP and exact patching

    @classmethod
    def from_config(cls, components: dict[str, Any]) -> ComponentSettings:
        return cls(
            exact=bool(components.get("exact", cls.exact)),
            grad_drop=bool(components.get("grad_drop", cls.grad_drop)),
            batch_size=int(components.get("batch_size", cls.batch_size)),
            top_k=int(components.get("top_k", cls.top_k)),
        )

    def recorded(self) -> dict[str, Any]:
        return {"exact": self.exact, "grad_drop": self.grad_drop, "batch_size": self.batch_size, "top_k": self.top_k}


class ExactnessError(UserError):
    """The attributions do not add up to the model's own logits."""


def _model_parts(model: LoadedModel, probe_ids: list[int]) -> tuple[ComponentRunner, nn.Module]:
    """The backend's component runner and the model's final norm (found by data flow)."""
    try:
        runner = model.backend.components()
    except NotDecomposable as error:
        raise UserError(f"model {model.key!r}: experiment 004 cannot decompose its blocks: {error}") from error
    return runner, find_final_norm(runner.hf_model, runner.layers, probe_ids)


def _competitor(hf, ids: list[int], answer: int) -> int:
    """The model's most probable next token other than ``answer`` after ``ids``."""
    device = next(hf.parameters()).device
    with torch.no_grad():
        logits = hf(torch.tensor([ids], device=device)).logits[0, -1].float()
    logits[answer] = -math.inf
    return int(torch.argmax(logits))


def exactness_limit(tolerance: float, logits: torch.Tensor) -> float:
    """How far the attributions' sum may be from the model's logits: the lens's identity
    tolerance, relative to the logits' size where they exceed 1."""
    return tolerance * max(1.0, float(logits.abs().max()))


def run_components(model: LoadedModel, pairs: list[dict[str, Any]], settings: ComponentSettings, lens: LensSettings):
    """Attribute and patch every pair; return (summary for the JSON, record rows)."""
    pairs, skipped = resolved_pairs(model, pairs)
    tokenised = [tokenise_pair(model.tokenizer, pair, model.key) for pair in pairs]
    for pair, tp in zip(pairs, tokenised):  # before any work
        check_context(model, pair, len(tp.clean_ids), "its prompts")
    runner, final_norm = _model_parts(model, tokenised[0].clean_ids)
    parts = runner.parts
    n_heads = parts[0].n_heads
    tolerance = lens.tolerance(model.dtype)
    names = TokenNames(model.tokenizer)
    rows: list[dict[str, Any]] = []
    summaries = []
    worst = {"max_abs_logit_diff": 0.0, "max_head_diff": 0.0}
    parallel = False
    for index, (pair, tp) in enumerate(zip(pairs, tokenised), start=1):
        started = time.perf_counter()
        for warning in tp.warnings:
            log.warning("model %s, pair %s: %s", model.key, pair["id"], warning)
        competitor = _competitor(runner.hf_model, tp.clean_ids, tp.clean_answer_id)
        targets = {"answer": tp.clean_answer_id, "competitor": competitor, "corrupted_answer": tp.corrupted_answer_id}
        try:
            attribution = dla.attribute(runner, final_norm, tp.clean_ids, list(targets.values()))
        except NotDecomposable as error:
            raise UserError(f"model {model.key!r}: experiment 004 cannot decompose its blocks: {error}") from error
        deviation, head_deviation = attribution.deviation(), attribution.head_deviation()
        limit = exactness_limit(tolerance, attribution.model_logits)
        if not deviation <= limit or not head_deviation <= limit:
            raise ExactnessError(
                f"model {model.key!r}, pair {pair['id']!r}: the direct logit attributions do not add up to the model's own "
                f"logits (off by {deviation:.3g}, heads against their attention by {head_deviation:.3g}; allowed {limit:.3g}, "
                "lens.identity_tolerance relative to the logits). The final norm or a block is not what the attribution "
                "assumes: report the model's architecture"
            )
        parallel = parallel or attribution.parallel
        worst["max_abs_logit_diff"] = max(worst["max_abs_logit_diff"], deviation)
        worst["max_head_diff"] = max(worst["max_head_diff"], head_deviation)
        dla_done = time.perf_counter()
        answers = (tp.clean_answer_id, tp.corrupted_answer_id)
        # Both prompts' component outputs and logit differences, once: the patching baselines,
        # and what exact patching and AtP read.
        runs = (patching.activations(runner, tp.clean_ids, answers), patching.activations(runner, tp.corrupted_ids, answers))
        baselines = {"logit_diff_clean": runs[0].logit_diff, "logit_diff_corrupted": runs[1].logit_diff}
        exact = (patching.exact(runner, tp.clean_ids, tp.corrupted_ids, answers, batch_size=settings.batch_size, runs=runs)
                 if settings.exact else None)
        exact_done = time.perf_counter()
        atp = patching.attribution(runner, tp.clean_ids, tp.corrupted_ids, answers, clean=runs[0])
        atp_done = time.perf_counter()
        drop = (patching.attribution(runner, tp.clean_ids, tp.corrupted_ids, answers, grad_drop=True, clean=runs[0])
                if settings.grad_drop else None)
        tokens = [names(i) for i in tp.clean_ids]
        rows += _rows(model.key, pair["id"], parts, tokens, attribution, exact, atp, drop)
        summary = _pair_summary(pair, tp, tokens, targets, names, attribution, baselines)
        summary["components"] = len(recorded_components(parts, attribution))
        if exact is not None:
            summary["atp_agreement"] = patching.agreement(exact, atp, settings.top_k)
            if drop is not None:
                summary["grad_drop_agreement"] = patching.agreement({k: v.abs() for k, v in exact.items()}, drop, settings.top_k)
        summaries.append(summary)
        log.info(
            "pair %d/%d %s: %d tokens, %d components; DLA off by %.2g (%.2f s), exact patching %s, AtP %.2f s%s",
            index, len(pairs), pair["id"], len(tp.clean_ids), len(patching.components(parts)), deviation, dla_done - started,
            f"{exact_done - dla_done:.2f} s" if exact is not None else "off", atp_done - exact_done,
            f", GradDrop {time.perf_counter() - atp_done:.2f} s" if drop is not None else "",
        )
    summary = {
        "components": settings.recorded(),
        "lens": {"use_fp32_unembed": lens.use_fp32_unembed},
        "heads": _heads_note(parts, n_heads),
        # Attention and MLP reading the same residual: "after attention" (mid_*) is the block's
        # input plus the attention's write.
        "parallel_blocks": parallel,
        "exactness_check": {**worst, "tolerance": tolerance},
        "pairs": summaries,
        **({"skipped_pairs": skipped} if skipped else {}),
    }
    return summary, rows


def _heads_note(parts: list[Block], n_heads: int) -> dict[str, Any]:
    if all(block.projection is not None for block in parts):
        return {"exposed": True, "n_heads": n_heads, "d_head": parts[0].d_head}
    return {
        "exposed": False, "n_heads": 0,
        "note": "the attention's heads are not read through a linear output projection of H x d_head here "
                "(a fused kernel or another layout): attention is attributed and patched per layer only",
    }


def recorded_components(parts, attribution: dla.Attribution) -> list[tuple[int, str]]:
    """(layer, component) of the records, block by block: those patched, and the attention's
    bias where it has one (attributed, not patched)."""
    out = []
    for layer, block in enumerate(parts):
        out += [(layer, "attention"), (layer, "mlp")] + [(layer, f"head{h}") for h in range(block.n_heads)]
        if f"L{layer}.attention_bias" in attribution.shares:
            out.append((layer, "attention_bias"))
    return out


# more than 6 parameters: one pair's results from the four measures, each its own object
def _rows(key, pair_id, parts, tokens, attribution: dla.Attribution, exact, atp, drop) -> list[dict[str, Any]]:
    last = len(tokens) - 1
    rows = []
    for layer, component in recorded_components(parts, attribution):
        name = f"L{layer}.{component}"
        for position in range(len(tokens)):
            row = {"model": key, "pair": pair_id, "layer": layer, "component": component, "position": position,
                   "token": tokens[position]}
            for measure, values in (("exact", exact), ("atp", atp), ("grad_drop", drop)):
                row[measure] = float(values[name][position]) if values is not None and name in values else math.nan
            for target_index, target in enumerate(TARGETS):
                row[f"dla_{target}"] = float(attribution.shares[name][target_index]) if position == last else math.nan
            rows.append(row)
    return rows


# more than 6 parameters: one pair's results from each step of its run, each its own object
def _pair_summary(pair, tp, tokens, targets, names, attribution: dla.Attribution, baselines) -> dict[str, Any]:
    by_target = {}
    for index, (target, token_id) in enumerate(targets.items()):
        by_target[target] = {
            "token_id": token_id,
            "token": names(token_id),
            "logit": float(attribution.model_logits[index]),
            "dla_embedding": float(attribution.shares["embedding"][index]),
            "dla_constant": float(attribution.constant[index]),
            # The lens on the residual between attention and MLP and after the MLP, per block.
            "mid_prob": [float(p[index]) for p, _ in attribution.mid_lens],
            "mid_rank": [int(r[index]) for _, r in attribution.mid_lens],
            "post_prob": [float(p[index]) for p, _ in attribution.post_lens],
            "post_rank": [int(r[index]) for _, r in attribution.post_lens],
        }
    return {
        **pair_identity(pair, tp),
        "clean_tokens": tokens,
        "subject_positions": tp.subject_positions,
        "targets": by_target,
        "softcap": attribution.softcap,
        "exactness": {"max_abs_logit_diff": attribution.deviation(), "max_head_diff": attribution.head_deviation()},
        **baselines,
        "warnings": tp.warnings,
    }


def write_component_outputs(model: ModelSpec, lens_settings: LensSettings, components: dict[str, Any], pairs: list[dict[str, Any]],
                            outputs: Outputs) -> dict[str, Any]:
    """Attribute and patch every pair on ``model`` and write its JSON and records (together or not at all).

    The model is read through forward hooks on its own modules whatever the config's
    ``backend``: TransformerBridge replaces the attention modules with its own components,
    which this experiment's data-flow discovery does not take apart into heads."""
    settings = ComponentSettings.from_config(components)
    if not pairs:
        raise UserError("experiment 004 has no pairs: it patches experiment 002's, add some under patching.pairs in config/config.yaml")
    return run_model_job(model.on_backend("hooks"), lens_settings, replace(outputs, columns=RECORD_COLUMNS, list_columns=()),
                         lambda loaded, tuned: run_components(loaded, pairs, settings, lens_settings))

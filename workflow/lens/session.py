"""What a lens run is made of, on a loaded model: the lenses (``Lens``: ``forward(hidden,
layer)`` gives logits; ``LogitLens``, ``TunedLensReader``), the two heads (``LensHeads``:
the recorded lens's and the model-faithful reference), the trained tuned lens
(``open_tuned_lens``), tokenising a probe, the identity check (``IdentityCheck``: the lens at
the last layer against the model's own logits, one tolerance and one message for every
experiment), where an answer becomes top-1 (``answer_layers``), and the model metadata
every experiment's JSON records; ``LensSession`` holds them for one run. The run on probes
is ``workflow.lens.run``'s. Nothing here knows an experiment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from workflow.base.errors import UserError
from workflow.config.settings import LensSettings, PatchscopeSettings
from workflow.lens.patchscope import patchscope_translator
from workflow.lens.readout import PRODUCT_ROWS, FinalLogits, RowStats, lens_statistics, rows_padded, uses_kernel
from workflow.lens.tuned import load
from workflow.model.head import LensHead
from workflow.model.load import LoadedModel, dtype_name
from workflow.model.logit_steps import logit_postprocessor, logit_steps, unapplied_logit_keys
from workflow.provenance.record import package_versions


class LensIdentityError(RuntimeError):
    """The lens at the last layer does not reproduce the model's own output."""


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
    ids = tokenize_prompt(tokenizer, probe)
    answer_ids = tokenizer(probe["answer"], add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise UserError(f"probe {probe['id']!r}: the answer {probe['answer']!r} tokenises to nothing")
    return ids, [int(i) for i in answer_ids]


def tokenize_prompt(tokenizer, probe: dict[str, Any]) -> list[int]:
    """Token ids of a probe's prompt, as the model's tokenizer makes them."""
    if not probe["prompt"].strip():
        raise UserError(f"probe {probe['id']!r}: the prompt is empty; give it some text (config key probes)")
    ids = tokenizer(probe["prompt"], add_special_tokens=True)["input_ids"]
    if not ids:
        raise UserError(f"probe {probe['id']!r}: the prompt tokenises to nothing")
    return [int(i) for i in ids]


class LensHeads(NamedTuple):
    """The two heads of a lens run (one object per role, by name):
    ``lens``: the head the recorded lens decodes with (the model's final norm unless
    ``use_norm_lens`` is off); ``reference``: the model-faithful head (the model's own final
    norm, unembedding and logit steps), for KL to the final distribution, the final scores
    and the identity check, and the head a tuned lens is trained for."""

    lens: LensHead
    reference: LensHead


def lens_heads(model: LoadedModel, settings: LensSettings) -> LensHeads:
    """The recorded lens head, and the model-faithful head used for KL and the identity check."""
    backend = model.backend
    postprocess = logit_postprocessor(model.hf_config)
    reference = LensHead.from_modules(
        backend.final_norm, backend.unembed, postprocess, model.dtype, True, settings.use_fp32_unembed
    )
    if settings.use_norm_lens:
        return LensHeads(reference, reference)
    return LensHeads(LensHead(None, reference.unembed, postprocess, reference.compute_dtype), reference)


def open_tuned_lens(model: LoadedModel, settings: LensSettings, directory) -> tuple[Any, dict[str, Any]]:
    """The tuned lens trained for this model (``workflow.lens.tuned.TunedLens``) and its training
    config; one trained for other weights is refused, naming the directory."""

    return load(directory, lens_heads(model, settings).reference, model.key)


def logit_deviation(lens_logits: torch.Tensor, model_logits: torch.Tensor) -> dict[str, float]:
    """How far the lens at layer L is from the model's own output, on scale-sensitive terms.

    Probabilities alone hide a missed logit scale on a near-uniform distribution (every
    probability is tiny), so the logits are compared too, relative to their size
    (``max_rel_logit_diff``: the largest difference over the largest logit, at least 1),
    and KL(model || lens) in nats. Compared on the lens's device (a model placed across
    GPUs may hand its logits back from the device of its last module).
    """
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


class IdentityCheck:
    """The lens at the last layer against the model's own logits, on every prompt a run
    reads: one tolerance (``LensSettings.tolerance``) and one message for every experiment,
    and the worst deviation seen, as the JSON records it (``recorded``)."""

    def __init__(self, model: LoadedModel, settings: LensSettings):
        self.model = model
        self.tolerance = settings.tolerance(model.dtype)
        self.worst: dict[str, float] = {}

    def __call__(self, lens_logits: torch.Tensor, model_logits: torch.Tensor, where: str,
                 bound: torch.Tensor | None = None) -> dict[str, float]:
        """The deviation of ``lens_logits`` from ``model_logits`` (``logit_deviation``); a
        deviation beyond the tolerance (or NaN) raises ``LensIdentityError`` naming the model
        and ``where`` (a probe, a pair's prompt, a generated token).

        ``bound``: how far each of the model's logits may be from the exact product (the
        llama.cpp backend's activation rounding, ``LensSession.logit_bound``): then every
        logit must be within its bound (``logit_diff_over_bound`` at most 1), and the other
        measures are recorded, not held to the float32 tolerance."""
        deviation = logit_deviation(lens_logits, model_logits)
        if bound is not None:
            difference = (lens_logits.double() - model_logits.to(lens_logits.device).double()).abs()
            # A logit equal to the bit needs no bound (a zero row of a tied unembedding has a
            # bound of 0): 0/0 counts as 0, a NaN difference stays NaN and fails.
            over = torch.where(difference == 0, 0.0, difference / bound.to(lens_logits.device).double())
            deviation["logit_diff_over_bound"] = float(over.max())
        self.worst = {k: max(self.worst.get(k, 0.0), v) for k, v in deviation.items()}
        if bound is not None:
            failed = None if deviation["logit_diff_over_bound"] <= 1.0 else "logit_diff_over_bound"
        else:
            failed = identity_failure(deviation, self.tolerance)
        if failed is not None:
            raise LensIdentityError(self.message(where, deviation, failed))
        return deviation

    def recorded(self) -> dict[str, float]:
        """The JSON's ``identity_check``: the worst deviation, as powers of ten, and the tolerance."""
        return {**recorded_deviation(self.worst), "tolerance": self.tolerance}

    def message(self, where: str, deviation: dict[str, float], failed: str) -> str:
        model = self.model
        config = model.hf_config
        steps = ", ".join(f"{op} by {key}={value:g}" for key, op, value in logit_steps(config)) or "none"
        unapplied = unapplied_logit_keys(config)
        return (
            f"model {model.key!r}, {where}: the lens at layer {model.n_layers} does not reproduce the "
            f"model's own output on {model.device}/{dtype_name(model.dtype)}: {failed} = {deviation[failed]:.3g} "
            + (f"({failed} is the largest logit difference over what llama.cpp's rounding of the unembedding's "
               "input allows, at most 1; " if failed == "logit_diff_over_bound" else f"(tolerance {self.tolerance:g}; ")
            + f"largest logit difference {deviation['max_abs_logit_diff']:.3g}, "
            f"probability {deviation['max_abs_prob_diff']:.3g}, KL {deviation['kl_model_to_lens']:.3g} nats). "
            f"Steps applied after the unembedding: {steps}."
            + (f" The config also has {', '.join(unapplied)}, which the lens does not apply to model type "
               f"{config.model_type!r}: if the model uses it on its logits, add it to LOGIT_STEPS in "
               "workflow/model/logit_steps.py." if unapplied else
               " If the architecture changes its logits after the unembedding, add that step to LOGIT_STEPS in "
               "workflow/model/logit_steps.py; otherwise the device may compute wrong results: try device: cpu and dtype: float32.")
            + " Nothing was written."
        )


class Lens:
    """A lens: what the residual stream at a layer predicts, as logits over the vocabulary,
    ``forward(hidden, layer)`` [.., d] -> [.., V] (the shape tuned-lens gives its lenses).
    ``name`` is the records' ``lens`` column; ``head`` the head it decodes with;
    ``tuned`` the tuned lens, its change of basis per layer before the head (None: none), which
    ``workflow.lens.readout.lens_statistics`` streams through in blocks instead of calling
    ``forward`` on the whole vocabulary."""

    name = ""
    tuned: Any = None

    def __init__(self, head: LensHead):
        self.head = head

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        if self.tuned is not None:
            hidden = self.tuned(hidden, layer)
        return self.head.logits(hidden)

    __call__ = forward


class LogitLens(Lens):
    """Every layer's residual through the model's own final norm and unembedding (the
    normalised logit lens; the unembedding alone with ``use_norm_lens: false``)."""

    name = "logit"


class TunedLensReader(Lens):
    """Every layer's residual through its trained affine translator (``workflow.lens.tuned.TunedLens``)
    and then the logit lens's head."""

    name = "tuned"

    def __init__(self, head: LensHead, tuned):
        super().__init__(head)
        self.tuned = tuned


class PatchscopeReader(Lens):
    """Every layer's residual written into the patchscope's inspection prompt and decoded by
    the model itself (``workflow.lens.patchscope.PatchscopeTranslator``), then the logit
    lens's head on what comes out."""

    name = "patchscope"

    def __init__(self, head: LensHead, translator):
        super().__init__(head)
        self.tuned = translator


class LensSession:
    """A lens run on one loaded model, as every experiment, generation and the chat hold it:
    the settings, both heads (``heads``), the lenses (``lenses``: the logit lens, the tuned
    lens where its translators are given, the patchscope lens where its settings are), the
    identity check and the token names."""

    def __init__(self, model: LoadedModel, settings: LensSettings, tuned=None, patchscope: PatchscopeSettings | None = None):
        self.model = model
        self.settings = settings
        self.heads = lens_heads(model, settings)
        self.tuned = tuned
        self.lenses: list[Lens] = [LogitLens(self.heads.lens)]
        if tuned is not None:
            self.lenses.append(TunedLensReader(self.heads.lens, tuned))
        self.patchscope = None if patchscope is None else patchscope_translator(model, patchscope)
        if self.patchscope is not None:
            self.lenses.append(PatchscopeReader(self.heads.lens, self.patchscope))
        self.identity = IdentityCheck(model, settings)
        self.names = TokenNames(model.tokenizer)

    @property
    def lens_names(self) -> list[str]:
        return [lens.name for lens in self.lenses]

    @property
    def engine_rounds(self) -> bool:
        """Whether the backend's engine rounds the model's logits beyond float32 (llama.cpp's
        activations), so that the identity check allows its bound (``logit_bound``)."""
        return getattr(self.model.backend, "logit_bound", None) is not None

    def logit_bound(self, rows: torch.Tensor) -> torch.Tensor | None:
        """How far the model's own logits may be from the exact product of its head on the
        last layer's residuals ``rows`` [n, d]: the backend's bound where its engine rounds
        (llama.cpp's activations, [n, V]), None where float32 rounding is all (the
        tolerance then holds)."""
        return self.model.backend.logit_bound(self.heads.reference.normed(rows)) if self.engine_rounds else None

    def check_identity(self, final: torch.Tensor, model_logits: torch.Tensor, names: list[str],
                       block: int = PRODUCT_ROWS, lens_logits: torch.Tensor | None = None) -> list[dict[str, float]]:
        """The identity check of each row of ``final`` [n, d] (the last layer's residuals)
        against the model's logits there [n, V], named ``names[i]`` in its message.
        ``lens_logits`` [n, V]: the reference head's logits of ``final`` as the lens's pass
        over the vocabulary computed them (``FinalLogits``); without them they are computed
        here. Both, and the backend's bound, are computed in products of a fixed shape
        (``block`` rows here), so that a row's figures are the same whatever else it was
        checked with."""
        if lens_logits is None:
            lens_logits = rows_padded(self.heads.reference.logits, final, block)
        lens_logits = lens_logits.cpu()
        bounds = rows_padded(self.logit_bound, final, block) if self.engine_rounds else None
        return [self.identity(lens_logits[b : b + 1], model_logits[b : b + 1], name, None if bounds is None else bounds[b : b + 1])
                for b, name in enumerate(names)]

    def statistics(
        self, residuals: torch.Tensor, answers: int | torch.Tensor, lens: Lens, separate_positions: bool = False,
        final: FinalLogits | None = None,
    ) -> Iterator[RowStats]:
        """``workflow.lens.readout.lens_statistics`` of ``residuals`` [L+1, T, d] through ``lens``
        (one of ``lenses``), with this run's model-faithful head and settings; ``final``:
        where to keep the reference head's last-layer logits of some positions, as the first
        lens's pass computes them (the other lenses' passes leave it alone)."""
        return lens_statistics(
            residuals, lens.head, self.heads.reference, answers, self.settings.top_k, self.model.vocab_size,
            self.settings.working_memory_mb, lens.tuned, separate_positions, final if lens is self.lenses[0] else None,
        )


def answer_layers(top1_ids: list[int], answer_id: int) -> tuple[int | None, int | None]:
    """First layer where the answer is top-1, and the layer from which it stays top-1."""
    first = next((layer for layer, t in enumerate(top1_ids) if t == answer_id), None)
    stable = None
    for layer in range(len(top1_ids) - 1, -1, -1):
        if top1_ids[layer] != answer_id:
            break
        stable = layer
    return first, stable


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
    first token only. (An answer written without the space a word takes after the prompt is
    refused while planning: workflow.config.probes.joins_prompt.)"""
    if len(answer_ids) == 1:
        return []
    first = tokenizer.decode([answer_ids[0]])
    return [
        f"the answer {probe['answer']!r} is {len(answer_ids)} tokens; the records follow its first token {first!r} "
        "(answer_logprob scores all of them)"
    ]


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
        # What the lens applies after the unembedding, at every layer (workflow/model/logit_steps.py, LOGIT_STEPS).
        "logit_steps": [{"key": key, "operation": op, "value": value} for key, op, value in logit_steps(config)],
        "backend": model.backend.name,
        # The streamed lens's passes over each block: the fused CPU kernel or torch's.
        "lens_kernel": "native" if uses_kernel(logit_postprocessor(config), model.device) else "torch",
        "device": model.device,
        "dtype": dtype_name(model.dtype),
        "packages": package_versions(),
    }

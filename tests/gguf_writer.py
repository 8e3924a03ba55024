"""Write a tiny transformers model as a GGUF file with the `gguf` package (F32 tensors).

Follows llama.cpp's conventions, which transformers' GGUF reader undoes: tensor
names (``blk.N.attn_q.weight``, …), the Llama Q/K head permutation, Gemma's norm
weights stored as 1 + w, and a GPT-2 style BPE tokenizer in the metadata.
``rewrite_gguf``, ``field_at`` and ``patch`` make damaged copies of such a file (a
header that disagrees with its tensors, a count the file cannot hold).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def _permute(x: np.ndarray, heads: int) -> np.ndarray:
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _tensor_names(arch: str, n_layers: int) -> dict[str, str]:
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    parts = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    if arch == "qwen2":
        parts.update({f"self_attn.{p}_proj.bias": f"attn_{p}.bias" for p in "qkv"})
    if arch == "gemma3":
        del names["lm_head.weight"]  # tied to the embedding
        parts.update(
            {
                "post_attention_layernorm.weight": "post_attention_norm.weight",
                "pre_feedforward_layernorm.weight": "ffn_norm.weight",
                "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
                "self_attn.q_norm.weight": "attn_q_norm.weight",
                "self_attn.k_norm.weight": "attn_k_norm.weight",
            }
        )
    for i in range(n_layers):
        names.update({f"model.layers.{i}.{hf}": f"blk.{i}.{g}" for hf, g in parts.items()})
    return names


# A mix of the block types llama.cpp writes, all with numpy quantisers in `gguf`; norms
# and biases stay float32 as llama.cpp keeps them.
QUANTISED = {"token_embd": "Q8_0", "attn": "Q4_1", "ffn": "Q5_0", "output.": "F16"}


def _quantised_type(name: str, x: np.ndarray):
    import gguf

    if x.ndim != 2 or x.shape[-1] % 32:
        return None
    for part, kind in QUANTISED.items():
        if part in name:
            return gguf.GGMLQuantizationType[kind]
    return None


def write_gguf(model_dir: Path, out: Path, arch: str, quantise: bool = False) -> Path:
    """GGUF (``arch``: llama, qwen2 or gemma3) of the tiny model saved in ``model_dir``:
    float32 tensors, or with ``quantise`` the matrices in Q8_0, Q4_1, Q5_0 and F16."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    c = model.config
    spec = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    tokens = [""] * len(spec["model"]["vocab"])
    for token, index in spec["model"]["vocab"].items():
        tokens[index] = token
    special = {t["id"] for t in spec["added_tokens"]}
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]

    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)
    writer.add_rope_freq_base(rope["rope_theta"])
    if arch == "gemma3":
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
        writer.add_sliding_window(c.sliding_window)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(c.bos_token_id)
    writer.add_eos_token_id(c.eos_token_id)
    writer.add_pad_token_id(c.pad_token_id)
    writer.add_unk_token_id(spec["model"]["vocab"]["<unk>"])
    writer.add_add_bos_token(True)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for hf, name in _tensor_names(arch, c.num_hidden_layers).items():
        x = state[hf]
        if arch == "llama" and hf.endswith("q_proj.weight"):
            x = _permute(x, c.num_attention_heads)
        if arch == "llama" and hf.endswith("k_proj.weight"):
            x = _permute(x, c.num_key_value_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            x = x + 1  # llama.cpp multiplies by the stored weight; Gemma's norm is x * (1 + w)
        kind = _quantised_type(name, x) if quantise else None
        if kind is None:
            writer.add_tensor(name, np.ascontiguousarray(x))
        else:
            writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(x), kind), raw_dtype=kind)
    finish(writer)
    return out


def finish(writer) -> None:
    """Write a GGUFWriter's header, metadata and tensors, and close the file."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def rewrite_gguf(source: Path, out: Path, values: dict | None = None, drop=lambda name: False,
                 tensors: dict | None = None) -> Path:
    """A copy of GGUF ``source`` with metadata ``values`` replaced or added (key -> value;
    a list is written as an array, an int as uint32), the tensors ``drop(name)`` picks left
    out and float32 ``tensors`` (name -> array) added: a file whose header disagrees with
    its tensors, written by gguf's own writer."""
    import gguf

    values = dict(values or {})
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(out), str(reader.fields["general.architecture"].contents()))
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture" or field.name in values:
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(field.name, field.contents())
        else:
            writer.add_key_value(field.name, field.contents(), field.types[0])
    for key, value in values.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, gguf.GGUFValueType.UINT32 if isinstance(value, int) else gguf.GGUFValueType.STRING)
    for tensor in reader.tensors:
        if not drop(tensor.name):
            writer.add_tensor(tensor.name, np.array(tensor.data), raw_shape=list(reversed(tensor.shape.tolist())),
                              raw_dtype=tensor.tensor_type)
    for name, array in (tensors or {}).items():
        writer.add_tensor(name, np.asarray(array, dtype=np.float32))
    finish(writer)
    return out


def field_at(data: bytes, name: str) -> int:
    """Where the header field after the first length-prefixed string ``name`` starts: a
    metadata key's value type, or a tensor entry's dimension count."""
    encoded = name.encode()
    return data.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded)


def patch(data: bytes, at: int, fmt: str, value) -> bytes:
    """``data`` with the little-endian ``fmt`` value at byte ``at`` replaced."""
    size = struct.calcsize("<" + fmt)
    return data[:at] + struct.pack("<" + fmt, value) + data[at + size :]

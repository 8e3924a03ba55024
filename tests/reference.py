"""An independent logit lens with plain transformers, to check the pipeline against."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

# Where each architecture keeps its final norm (the reference names it explicitly;
# the pipeline itself never does).
FINAL_NORM = {
    "gpt2": "transformer.ln_f",
    "gptj": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
    "opt": "model.decoder.final_layer_norm",
    "falcon": "transformer.ln_f",
    "phi": "model.final_layernorm",
}


def reference_layers(model_dir, prompt: str):
    """Per-layer float32 logits [L+1, T, V], the model's own logits [T, V] and the ids.

    ``output_hidden_states`` gives the embedding output and every block's output;
    transformers has already applied the final norm to the last one, so the norm is
    applied to all the others only. Soft-capping, where configured, follows.
    """
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(prompt, return_tensors="pt").input_ids
    norm = hf.get_submodule(FINAL_NORM.get(hf.config.model_type, "model.norm"))
    cap = getattr(hf.config, "final_logit_softcapping", None)
    # Logit scales some families apply after the head (as their own forward does).
    scale = {"cohere": getattr(hf.config, "logit_scale", 1.0),
             "granite": 1.0 / getattr(hf.config, "logits_scaling", 1.0)}.get(hf.config.model_type, 1.0)
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        layers = []
        for i, h in enumerate(out.hidden_states):
            normed = h if i == len(out.hidden_states) - 1 else norm(h)
            logits = hf.get_output_embeddings()(normed) * scale
            if cap:
                logits = torch.tanh(logits / cap) * cap
            layers.append(logits[0])
    return torch.stack(layers), out.logits[0], ids[0].tolist()

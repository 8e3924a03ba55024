"""Architectures whose logits pass through a step after the unembedding, and Falcon's layout.

Each step is read from the config (workflow/model/logit_steps.py, LOGIT_STEPS) and given a value that
matters on a tiny random model; the lens must apply it at every layer, and without it the
run-time identity check must stop the run, naming the key to check.
"""

import pytest
import torch

from tiny import make_tokenizer, save_random
from workflow.model import logit_steps as steps_module
from workflow.config.settings import LensSettings
from workflow.lens.session import LensIdentityError, lens_heads
from workflow.lens.run import read_probes
from workflow.model.load import load_model

PROBE = {"id": "capital", "prompt": "The capital of Germany is", "answer": " Berlin"}


def configs(tokenizer):
    import transformers as T

    v = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    decoder = dict(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, **ids)
    return {
        # (config, the key of its step, the step written out independently of LOGIT_STEPS)
        "falcon_h1": (T.FalconH1Config(**decoder, num_key_value_heads=2, lm_head_multiplier=0.35, mamba_d_state=8, mamba_n_heads=4,
                                       mamba_d_head=16, mamba_n_groups=1, mamba_d_ssm=64, mamba_chunk_size=16),
                      "lm_head_multiplier", lambda z: z * 0.35),
        "recurrent_gemma": (T.RecurrentGemmaConfig(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                                   num_attention_heads=4, num_key_value_heads=1, lru_width=64, attention_window_size=8,
                                                   logits_soft_cap=1.0, block_types=["recurrent", "attention", "recurrent"], **ids),
                            "logits_soft_cap", lambda z: torch.tanh(z / 1.0) * 1.0),
        "minicpm3": (T.MiniCPM3Config(**decoder, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8,
                                      qk_rope_head_dim=8, v_head_dim=16, dim_model_base=16),
                     "logits_scaling", lambda z: z / (64 / 16)),
        "cohere": (T.CohereConfig(**decoder, num_key_value_heads=2, logit_scale=0.35), "logit_scale", lambda z: z * 0.35),
        "granite": (T.GraniteConfig(**decoder, num_key_value_heads=2, logits_scaling=4.0), "logits_scaling", lambda z: z / 4.0),
        "gemma2": (T.Gemma2Config(**decoder, num_key_value_heads=2, head_dim=16, final_logit_softcapping=1.0, sliding_window=8),
                   "final_logit_softcapping", lambda z: torch.tanh(z / 1.0) * 1.0),
    }


CASES = list(configs(make_tokenizer()))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    tokenizer = make_tokenizer()
    root = tmp_path_factory.mktemp("logit-steps")
    return {name: save_random(root / name, config, tokenizer, seed=i) for i, (name, (config, _, _)) in enumerate(configs(tokenizer).items())}


def load(path, backend="auto"):
    return load_model("m", {"source": "local", "path": str(path)}, None, device="cpu", dtype="float32", backend=backend)


@pytest.mark.parametrize("arch", CASES)
def test_the_step_is_applied_at_every_layer(arch, model_dirs):
    _, key, step = configs(make_tokenizer())[arch]
    model = load(model_dirs[arch])
    assert [s[0] for s in steps_module.logit_steps(model.hf_config)] == [key]
    read = read_probes(model, [dict(PROBE)], LensSettings(top_k=3))
    rows = read.rows
    check = read.probes[0]["identity_check"]
    assert check["max_rel_logit_diff"] <= 1e-5 and check["kl_model_to_lens"] <= 1e-6
    head, _ = lens_heads(model, LensSettings())
    residuals, _ = model.backend.capture(read.probes[0]["input_ids"], "all")
    for layer in range(model.n_layers + 1):
        raw = head.unembed(head.norm(residuals[layer].float()))
        expected = step(raw).softmax(-1)
        got = [r for r in rows if r["layer"] == layer]
        for r in got:
            assert r["top1_prob"] == pytest.approx(expected[r["position"]].max().item(), abs=1e-5), (arch, layer)


@pytest.mark.parametrize("arch", CASES)
def test_without_the_step_the_identity_check_stops_the_run_naming_the_key(arch, model_dirs, monkeypatch):
    _, key, _ = configs(make_tokenizer())[arch]
    monkeypatch.setattr(steps_module, "LOGIT_STEPS", tuple(s for s in steps_module.LOGIT_STEPS if s[0] != key))
    if arch == "minicpm3":
        # Its head reads the norm's output divided by logits_scaling, so without the step the
        # norm cannot be found at all; the error names the config key behind it (logits_scaling
        # is a property computed from dim_model_base).
        with pytest.raises(RuntimeError, match=r"cannot find the module that feeds the output embedding.*dim_model_base"):
            load(model_dirs[arch])
        return
    model = load(model_dirs[arch])
    with pytest.raises(LensIdentityError, match=rf"does not reproduce the model's own output.*The config also has [^.]*{key}"):
        read_probes(model, [dict(PROBE)], LensSettings(top_k=3))


def test_the_same_key_means_what_the_model_type_says(model_dirs):
    from transformers import AutoConfig

    granite = AutoConfig.from_pretrained(model_dirs["granite"])
    assert steps_module.logit_steps(granite) == [("logits_scaling", "divide", 4.0)]
    granite.model_type = "hyperclovax"
    assert steps_module.logit_steps(granite) == [("logits_scaling", "multiply", 4.0)]
    granite.model_type = "unknown-family"
    assert steps_module.logit_steps(granite) == [] and "logits_scaling" in steps_module.unapplied_logit_keys(granite)


def test_falcon_new_decoder_architecture_runs(tmp_path):
    """Falcon-7B/40B/180B's layout (fused QKV, new_decoder_architecture): the forward hooks
    read it without changing the model's outputs, and auto falls back to them."""
    import transformers as T

    tokenizer = make_tokenizer()
    config = T.FalconConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                            num_kv_heads=2, new_decoder_architecture=True, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = save_random(tmp_path / "falcon", config, tokenizer)
    for backend in ("hooks", "auto"):
        model = load(path, backend)
        read = read_probes(model, [dict(PROBE)], LensSettings(top_k=3))
        assert read.probes[0]["identity_check"]["max_rel_logit_diff"] <= 1e-5
        assert len(read.rows) == (model.n_layers + 1) * len(read.probes[0]["input_ids"])

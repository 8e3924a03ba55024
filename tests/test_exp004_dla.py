"""Experiment 004's direct logit attribution (workflow/experiments/exp004/dla.py): the shares add up to
the model's own logits, the heads add up to their attention, and every share equals an
independent float64 computation written here from the architectures' formulas (hooks on
the attention and MLP modules, the RMS norms written out)."""

from __future__ import annotations

import pytest
import torch

from workflow.model.backends import find_decoder_layers, find_final_norm
from workflow.experiments.exp004.dla import attribute
from workflow.model.components import ComponentRunner, NotDecomposable

PROMPT = [1, 5, 9, 14, 3, 22, 7]
TOKENS = [11, 4, 30]


@pytest.fixture(scope="module")
def tiny_arch_dirs(tmp_path_factory):
    """GPT-2 (LayerNorm, biases) and GPT-NeoX (a parallel block), tiny and random."""
    from tiny import architecture_configs, make_tokenizer, save_random

    tokenizer = make_tokenizer()
    root = tmp_path_factory.mktemp("exp004-architectures")
    configs = architecture_configs(tokenizer)
    return {name: save_random(root / name, configs[name], tokenizer, seed=i) for i, name in enumerate(("gpt2", "gpt_neox"))}


def load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()


def parts(model):
    layers = find_decoder_layers(model, model.config.num_hidden_layers)
    return layers, find_final_norm(model, layers, PROMPT)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_the_shares_add_up_to_the_models_logits_and_the_heads_to_their_attention(tiny_dirs, arch):
    model = load(tiny_dirs[arch])
    layers, norm = parts(model)
    result = attribute(ComponentRunner(model, layers), norm, PROMPT, TOKENS)
    assert result.n_heads == 4
    assert set(result.shares) >= {"embedding", "L0.attention", "L2.mlp", "L1.head3"}
    assert result.model_logits.abs().max() > 0.1  # not a sum of zeros
    assert result.deviation() < 1e-4
    assert result.head_deviation() < 1e-4
    if arch == "gemma3":  # soft-capped: the shares are of the logit before the cap
        assert result.softcap == 8.0
    # the lens after the last MLP is the model's own output
    probs, ranks = result.post_lens[-1]
    with torch.no_grad():
        own = torch.softmax(model(torch.tensor([PROMPT])).logits[0, -1].double(), -1)
    assert torch.allclose(probs, own[TOKENS], rtol=1e-5, atol=1e-9)
    assert ranks.tolist() == [int((own > own[t]).sum()) + 1 for t in TOKENS]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_every_share_equals_an_independent_float64_computation(tiny_dirs, arch):
    model = load(tiny_dirs[arch])
    layers, norm = parts(model)
    result = attribute(ComponentRunner(model, layers), norm, PROMPT, TOKENS)

    reference = load(tiny_dirs[arch], torch.float64).requires_grad_(False)
    gemma = arch == "gemma3"
    seen = {}
    hooks = []
    for i, layer in enumerate(reference.model.layers):
        hooks.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("attn", i), o[0][0])))
        hooks.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("mlp", i), o[0])))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("z", i), a[0][0])))
    hooks.append(reference.model.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("final", a[0][0])))
    hooks.append(reference.model.embed_tokens.register_forward_hook(lambda m, a, o: seen.__setitem__("embed", o[0])))
    with torch.no_grad():
        reference(torch.tensor([PROMPT]))
    for h in hooks:
        h.remove()

    def rms_norm(module, x, at):
        """(weight, 1/rms) of an RMS norm at input x: Gemma's weight is 1 + w."""
        eps = getattr(module, "eps", None) or module.variance_epsilon
        weight = module.weight.double() + (1.0 if gemma else 0.0)
        return weight, 1.0 / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    final = seen["final"]
    w, s = rms_norm(reference.model.norm, final, -1)
    unembed = reference.lm_head.weight[TOKENS].double()

    def share(c):
        return unembed @ (w * c * s)[-1]

    # Gemma's embedding module multiplies by sqrt(d) itself.
    expected = {"embedding": share(seen["embed"])}
    for i, layer in enumerate(reference.model.layers):
        attn, mlp = seen[("attn", i)], seen[("mlp", i)]
        if gemma:
            pw, ps = rms_norm(layer.post_attention_layernorm, attn, -1)
            through = lambda c, pw=pw, ps=ps: pw * c * ps  # noqa: E731
            expected[f"L{i}.attention"] = share(through(attn))
            fw, fs = rms_norm(layer.post_feedforward_layernorm, mlp, -1)
            expected[f"L{i}.mlp"] = share(fw * mlp * fs)
        else:
            through = lambda c: c  # noqa: E731
            expected[f"L{i}.attention"] = share(attn)
            expected[f"L{i}.mlp"] = share(mlp)
        z, wo = seen[("z", i)], layer.self_attn.o_proj.weight.double()
        d_head = layer.self_attn.head_dim
        for h in range(wo.shape[1] // d_head):
            part = slice(h * d_head, (h + 1) * d_head)
            expected[f"L{i}.head{h}"] = share(through(z[:, part] @ wo[:, part].T))
    assert set(expected) == set(result.shares)
    scale = max(float(v.abs().max()) for v in expected.values())
    for name, value in expected.items():
        assert torch.allclose(result.shares[name], value, rtol=1e-4, atol=1e-4 * scale), name


def test_a_layernorm_model_with_biases_adds_up_too(tiny_arch_dirs):
    """GPT-2: LayerNorm (centring, bias), biases everywhere, heads behind a Conv1D (not read
    per head, so attention is one share per layer)."""
    model = load(tiny_arch_dirs["gpt2"])
    layers = find_decoder_layers(model, model.config.n_layer)
    result = attribute(ComponentRunner(model, layers), find_final_norm(model, layers, PROMPT), PROMPT, TOKENS)
    assert result.deviation() < 1e-4
    assert result.constant.abs().max() > 0  # the final LayerNorm's bias, through the unembedding
    assert not any(".head" in name for name in result.shares)


def test_a_parallel_block_adds_both_outputs_to_one_residual(tiny_arch_dirs):
    """GPT-NeoX's attention and MLP read the same residual: the attention's share is its
    output, the MLP's the rest of what the block added; they add up to the model's logits,
    and the lens "after attention" reads the block's input plus the attention's write."""
    model = load(tiny_arch_dirs["gpt_neox"])
    layers = find_decoder_layers(model, model.config.num_hidden_layers)
    norm = find_final_norm(model, layers, PROMPT)
    result = attribute(ComponentRunner(model, layers), norm, PROMPT, TOKENS)
    assert result.parallel and result.deviation() < 1e-4 and result.n_heads == model.config.num_attention_heads
    run = ComponentRunner(model, layers).trace(PROMPT)
    assert run.parallel == [True] * len(layers)
    for layer in range(len(layers)):
        assert torch.equal(run.mid[layer], run.pre[layer] + run.attention_out[layer])
        assert torch.allclose(run.post[layer] - run.mid[layer], run.mlp_out[layer], atol=1e-5)


def test_a_norm_that_is_not_a_scale_times_a_weight_is_refused_in_words():
    """A module that mixes the width (here a linear map) has no frozen elementwise form."""
    from workflow.experiments.exp004.dla import FrozenNorm

    torch.manual_seed(0)
    mixing = torch.nn.Linear(8, 8, bias=False)
    with pytest.raises(NotDecomposable, match="is not a scale times an elementwise weight"):
        FrozenNorm(mixing, torch.randn(3, 8))
    rms = torch.nn.RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        rms.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 8)
    frozen = FrozenNorm(rms, x)
    assert torch.allclose(frozen.linear(x.double()) + frozen.b, rms(x).double(), atol=1e-6)

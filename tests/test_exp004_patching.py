"""Experiment 004's component patching and attribution patching (workflow/experiments/exp004/patching.py):
exact patching equals a hooked forward per site written here; AtP's estimate equals a
finite difference of the same patch in float64; GradDrop drops what it says."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from workflow.model.backends import find_decoder_layers
from workflow.experiments.exp004.patching import Component, agreement, attribution, components, exact
from workflow.model.components import ComponentRunner

CLEAN = [1, 5, 9, 14, 3, 22, 7]
CORRUPTED = [1, 5, 9, 18, 3, 22, 7]
ANSWERS = (11, 30)


def load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()


def layers_of(model):
    return find_decoder_layers(model, model.config.num_hidden_layers)


def logit_diff(model, ids, patch=None):
    """The corrupted run with one site overwritten by ``patch`` (component, position, value),
    hooked here on the modules by name, one prompt alone."""
    handles = []
    if patch is not None:
        c, position, value = patch
        layer = model.model.layers[c.layer]
        if c.kind == "head":
            d = layer.self_attn.head_dim

            def pre(module, args):
                args[0][0, position, c.head * d:(c.head + 1) * d] = value
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))
        else:
            module = layer.self_attn if c.kind == "attention" else layer.mlp

            def post(module, args, output):
                (output[0] if isinstance(output, tuple) else output)[0, position] = value
            handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
    finally:
        for h in handles:
            h.remove()
    return float(logits[ANSWERS[0]] - logits[ANSWERS[1]])


def clean_value(model, c, position):
    seen = {}
    layer = model.model.layers[c.layer]
    if c.kind == "head":
        d = layer.self_attn.head_dim
        h = layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("v", a[0][0, position, c.head * d:(c.head + 1) * d].clone()))
    else:
        module = layer.self_attn if c.kind == "attention" else layer.mlp
        h = module.register_forward_hook(lambda m, a, o: seen.__setitem__("v", (o[0] if isinstance(o, tuple) else o)[0, position].clone()))
    with torch.no_grad():
        model(torch.tensor([CLEAN]))
    h.remove()
    return seen["v"]


SITES = [(Component(0, "attention"), 3), (Component(1, "mlp"), 3), (Component(2, "mlp"), 6), (Component(0, "head", 2), 3),
         (Component(1, "head", 1), 6), (Component(2, "attention"), 6)]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_exact_patching_equals_a_hooked_forward_per_site(tiny_dirs, arch):
    model = load(tiny_dirs[arch])
    result = exact(ComponentRunner(model, layers_of(model)), CLEAN, CORRUPTED, ANSWERS, batch_size=5)
    assert set(result) == {c.name for c in components(ComponentRunner(model, layers_of(model)).parts)}
    assert len(result) == 3 * (2 + 4)
    clean, corrupted = logit_diff(model, CLEAN), logit_diff(model, CORRUPTED)
    assert abs(clean - corrupted) > 0.1
    for c, position in SITES:
        patched = logit_diff(model, CORRUPTED, (c, position, clean_value(model, c, position)))
        expected = (patched - corrupted) / (clean - corrupted)
        assert result[c.name][position].item() == pytest.approx(expected, abs=1e-5), (c.name, position)
    # Positions before the prompts differ read the same tokens: patching there changes nothing,
    # exactly (no forward pass is run for them), and a hooked forward agrees to float noise.
    last_block = f"L{len(layers_of(model)) - 1}."
    for name, values in result.items():
        assert values[:3].tolist() == [0.0, 0.0, 0.0], name
        if name.startswith(last_block):
            # The last block's write at position 3 reaches no later block, so not the last
            # position's logits: nothing reads it, no forward is run for it, and it is 0 exactly
            # on every CPU (a forward there gave 0 on some and ~1e-8 on others).
            assert values[3].item() == 0.0, name
        else:
            assert values[3] != 0, name  # the token the prompts differ in
    c = Component(1, "mlp")
    patched = logit_diff(model, CORRUPTED, (c, 1, clean_value(model, c, 1)))
    assert abs(patched - corrupted) < 1e-5


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_attribution_patching_is_the_gradient_of_the_patch(tiny_dirs, arch):
    """AtP is linear in the patch: its estimate equals the derivative of the effect of moving
    the site from its corrupted value toward its clean one (a central difference of two
    patched runs). The model is float64, but transformers computes its norms and attention's
    softmax in float32, so the step is 1e-2 (truncation ~1e-4) rather than tiny."""
    model = load(tiny_dirs[arch], torch.float64)
    estimate = attribution(ComponentRunner(model, layers_of(model)), CLEAN, CORRUPTED, ANSWERS)
    clean, corrupted = logit_diff(model, CLEAN), logit_diff(model, CORRUPTED)
    step = 1e-2
    for c, position in SITES:
        was = _corrupted_value(model, c, position)
        toward = clean_value(model, c, position) - was
        plus = logit_diff(model, CORRUPTED, (c, position, was + step * toward))
        minus = logit_diff(model, CORRUPTED, (c, position, was - step * toward))
        effect = (plus - minus) / (2 * step) / (clean - corrupted)
        assert estimate[c.name][position].item() == pytest.approx(effect, rel=1e-3, abs=1e-4), (c.name, position)


def _corrupted_value(model, c, position):
    global CLEAN
    saved, CLEAN = CLEAN, CORRUPTED
    try:
        return clean_value(model, c, position)
    finally:
        CLEAN = saved


def test_grad_drop_of_a_last_layer_site_is_its_plain_estimates_size(tiny_dirs):
    """Nothing after the last block carries its gradient: dropping any earlier layer leaves
    its estimate alone and dropping its own makes it 0, so GradDrop's mean of magnitudes over
    L - 1 is |AtP| exactly; an earlier site's differs."""
    model = load(tiny_dirs["llama"], torch.float64)
    layers = layers_of(model)
    plain = attribution(ComponentRunner(model, layers), CLEAN, CORRUPTED, ANSWERS)
    dropped = attribution(ComponentRunner(model, layers), CLEAN, CORRUPTED, ANSWERS, grad_drop=True)
    for name in ("L2.attention", "L2.mlp", "L2.head0"):
        assert torch.allclose(dropped[name], plain[name].abs(), rtol=1e-9, atol=1e-12), name
    assert not torch.allclose(dropped["L0.mlp"], plain["L0.mlp"].abs(), rtol=1e-3)


def test_agreement_is_spearman_and_top_k_overlap():
    """Over the sites patching can change: b0, exactly 0 in both (the runs write the same
    there), is left out; b1, 0 in the estimate alone, stays."""
    exact_ = {"a": torch.tensor([0.9, 0.1, -0.5], dtype=torch.float64), "b": torch.tensor([0.0, 0.3, 0.2], dtype=torch.float64)}
    estimate = {"a": torch.tensor([0.7, 0.2, -0.1], dtype=torch.float64), "b": torch.tensor([0.0, 0.0, 0.4], dtype=torch.float64)}
    found = agreement(exact_, estimate, k=2)
    x = pd.Series([0.9, 0.1, -0.5, 0.3, 0.2])
    y = pd.Series([0.7, 0.2, -0.1, 0.0, 0.4])
    assert found["spearman"] == pytest.approx(x.rank().corr(y.rank()))  # Pearson's of the (tie-averaged) ranks
    # |exact| top 2: 0.9 (a0), -0.5 (a2); |estimate| top 2: 0.7 (a0), 0.4 (b2)
    assert found["top2_overlap"] == 0.5 and found["sites"] == 5


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_exact_patching_equals_transformer_lens_patching_functions(tiny_dirs, arch):
    """TransformerLens 4's own patching (get_act_patch_attn_out, _mlp_out and
    _attn_head_out_by_pos) on its TransformerBridge of the same model: every site within 1e-4."""
    from transformer_lens import patching as tl

    from workflow.model.load import load_model

    bridge = load_model("t", {"source": "local", "path": str(tiny_dirs[arch])}, None, device="cpu", dtype="float32",
                        backend="bridge").backend.bridge
    clean_t, corrupted_t = torch.tensor([CLEAN]), torch.tensor([CORRUPTED])
    a, b = ANSWERS
    with torch.no_grad():
        clean, corrupted = (float(x[0, -1, a] - x[0, -1, b]) for x in (bridge(clean_t), bridge(corrupted_t)))
        _, cache = bridge.run_with_cache(clean_t)

        def metric(logits):
            return (logits[0, -1, a] - logits[0, -1, b] - corrupted) / (clean - corrupted)

        heads = tl.get_act_patch_attn_head_out_by_pos(bridge, corrupted_t, cache, metric)  # [layer, position, head]
        attention = tl.get_act_patch_attn_out(bridge, corrupted_t, cache, metric)  # [layer, position]
        mlp = tl.get_act_patch_mlp_out(bridge, corrupted_t, cache, metric)
    model = load(tiny_dirs[arch])
    ours = exact(ComponentRunner(model, layers_of(model)), CLEAN, CORRUPTED, ANSWERS)
    assert heads.shape == (3, len(CLEAN), 4)
    for layer in range(3):
        assert torch.allclose(ours[f"L{layer}.attention"], attention[layer].double(), atol=1e-4)
        assert torch.allclose(ours[f"L{layer}.mlp"], mlp[layer].double(), atol=1e-4)
        for head in range(4):
            assert torch.allclose(ours[f"L{layer}.head{head}"], heads[layer, :, head].double(), atol=1e-4)
    assert float(attention.abs().max()) > 0.1  # the check compares effects, not zeros

"""Architecture conformance: every family in the project's notes, as a tiny random model.

Each is saved as a ``local`` model and run through the pipeline's loader and lens, and through
experiment 004's attribution and component patching.
At the last layer the records must equal the model's own softmax; at every layer
they must equal the independent reference (tests/reference.py).
"""

import pytest

from gguf_writer import finish
from reference import reference_layers
from tiny import architecture_configs, make_tokenizer, save_random
from workflow.config.settings import LensSettings
from workflow.lens.session import lens_heads
from workflow.lens.run import read_probes
from workflow.model.head import LensHead
from workflow.model.load import load_model

ARCHITECTURES = list(architecture_configs(make_tokenizer()))
PROBE = {"id": "capital", "prompt": "The capital of Germany is", "answer": " Berlin"}


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
    tokenizer = make_tokenizer()
    root = tmp_path_factory.mktemp("architectures")
    return {
        name: save_random(root / name, config, tokenizer, seed=i)
        for i, (name, config) in enumerate(architecture_configs(tokenizer).items())
    }


def lens_rows(path, backend="auto"):
    model = load_model("m", {"source": "local", "path": str(path)}, None, device="cpu", dtype="float32", backend=backend)
    read = read_probes(model, [PROBE], LensSettings(top_k=3))
    return model, read.probes[0], read.rows


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lens_equals_reference_at_every_layer(arch, arch_dirs):
    model, probe, rows = lens_rows(arch_dirs[arch])
    assert probe["identity_check"]["max_abs_prob_diff"] <= 1e-5
    layers, hf_logits, ids = reference_layers(arch_dirs[arch], PROBE["prompt"])
    assert model.n_layers + 1 == layers.shape[0]
    assert probe["input_ids"] == ids
    answer = probe["answer_token_id"]
    probs = layers.softmax(-1)
    final = hf_logits.softmax(-1)
    assert len(rows) == layers.shape[0] * len(ids)
    for row in rows:
        p = probs[row["layer"], row["position"]]
        if row["layer"] == model.n_layers:
            own = final[row["position"]]
            assert row["top1_token"] == model.tokenizer.decode([int(own.argmax())])
            assert row["top1_prob"] == pytest.approx(own.max().item(), abs=1e-5)
            assert row["answer_prob"] == pytest.approx(own[answer].item(), abs=1e-5)
        assert row["top1_prob"] == pytest.approx(p.max().item(), abs=1e-5), (arch, row["layer"])
        assert row["answer_prob"] == pytest.approx(p[answer].item(), abs=1e-5), (arch, row["layer"])
    # The distributions are far from uniform, so agreement above is not trivial.
    assert max(r["top1_prob"] for r in rows) > 10 / model.vocab_size


def test_gemma2_soft_capping_is_applied_at_every_layer(arch_dirs):
    model = load_model("m", {"source": "local", "path": str(arch_dirs["gemma2"])}, None, device="cpu", dtype="float32")
    head, _ = lens_heads(model, LensSettings())
    uncapped = LensHead(head.norm, head.unembed, lambda z: z, head.compute_dtype)
    residuals, _ = model.backend.capture(model.tokenizer(PROBE["prompt"])["input_ids"], "all")
    cap = model.hf_config.final_logit_softcapping
    for layer in range(model.n_layers + 1):
        assert head.logits(residuals[layer]).abs().max().item() < cap
    # Without the cap some layer's logits exceed it, so the cap really acts.
    assert max(uncapped.logits(residuals[layer]).abs().max().item() for layer in range(model.n_layers + 1)) > cap


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_hooks_backend_matches_the_bridge(arch, arch_dirs):
    bridge_model, _, bridge_rows = lens_rows(arch_dirs[arch], "bridge")
    hooks_model, hooks_probe, hooks_rows = lens_rows(arch_dirs[arch], "hooks")
    assert bridge_model.backend.name == "transformer_bridge" and hooks_model.backend.name == "forward_hooks"
    assert hooks_probe["identity_check"]["max_abs_prob_diff"] <= 1e-5
    assert len(bridge_rows) == len(hooks_rows)
    for a, b in zip(bridge_rows, hooks_rows):
        assert (a["layer"], a["position"], a["top1_token"]) == (b["layer"], b["position"], b["top1_token"])
        for key in ("top1_prob", "answer_prob", "entropy", "kl_to_final"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), (arch, key, a["layer"])


def test_unsupported_architecture_falls_back_to_hooks(arch_dirs, monkeypatch):
    from workflow.model import load as models

    def refuse(*args, **kwargs):
        raise ValueError("architecture not supported by TransformerBridge")

    monkeypatch.setattr(models, "_boot_bridge", refuse)
    model, probe, _ = lens_rows(arch_dirs["qwen3"])
    assert model.backend.name == "forward_hooks"
    assert probe["identity_check"]["max_abs_prob_diff"] <= 1e-5


def test_memory_estimate_counts_parameters_once(arch_dirs):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workflow.model.load import estimate_memory

    for arch in ("gemma3", "llama"):  # tied and untied embeddings
        config = AutoConfig.from_pretrained(arch_dirs[arch])
        real = AutoModelForCausalLM.from_pretrained(arch_dirs[arch])
        count = sum(p.numel() for p in {id(p): p for p in real.parameters()}.values())
        estimate = estimate_memory(config, torch.bfloat16, LensSettings(working_memory_mb=16))
        assert estimate.parameters == count
        assert estimate.weights_bytes == 2 * count
        assert estimate.fp32_head_bytes == 4 * real.get_output_embeddings().weight.numel()


def test_a_model_too_big_for_the_machine_is_placed_on_disk_instead_of_refused(arch_dirs, monkeypatch, tmp_path):
    """With 10 MB free (less than the lens's working memory) and no budget set, the weights
    go to disk (tests/test_placement.py: the records are those of the model in memory)."""
    from workflow.model import load as models

    monkeypatch.setattr(models, "available_memory", lambda device: 10 * 2**20)
    monkeypatch.chdir(tmp_path)  # the default offload folder, resources/offload, is relative
    placed = load_model("m", {"source": "local", "path": str(arch_dirs["llama"])}, None, device="cpu", dtype="float32")
    assert placed.info["placement"]["weights_bytes_by_device"].keys() == {"disk"}
    assert placed.info["placement"]["max_memory_bytes"] == {"cpu": 0}


def test_unsupported_gguf_architecture_is_refused_clearly(tmp_path):
    import gguf
    import numpy as np

    from workflow.base.errors import UserError
    from workflow.gguf.prepare import prepare_model

    path = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    # One block, as the block count says (a count with no blocks is refused as damaged first).
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(8, dtype=np.float32))
    finish(writer)
    out = tmp_path / "prepared"
    with pytest.raises(UserError, match=r"model 'rwkv': this pipeline cannot read GGUF architecture 'rwkv6' \(it reads: .*llama, llama4.*qwen3moe.*\)\. Use the original safetensors checkpoint"):
        prepare_model("rwkv", {"source": "gguf", "path": str(path)}, out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["rwkv.gguf"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_components_decompose_every_architecture(arch, arch_dirs):
    """Experiment 004 on every family: each block's attention and MLP shares (through the final
    norm frozen) plus the embedding's and biases' are the logits of a separate plain forward
    (parallel blocks, OPT's MLP as two linears, Llama 4's experts included); heads add up to
    their attention where the attention reads them through a linear projection (all but
    GPT-2's Conv1D); an exactly patched MLP and attention output equal one hooked forward."""
    import torch
    from transformers import AutoModelForCausalLM

    from workflow.model.backends import find_decoder_layers, find_final_norm
    from workflow.experiments.exp004.dla import attribute
    from workflow.model.components import ComponentRunner, blocks, by_position
    from workflow.experiments.exp004.patching import exact

    model = AutoModelForCausalLM.from_pretrained(arch_dirs[arch], dtype=torch.float32).eval()
    n_layers = getattr(model.config, "num_hidden_layers", None) or model.config.n_layer
    layers = find_decoder_layers(model, n_layers)
    clean, corrupted, tokens = [1, 5, 9, 14, 3, 22, 7], [1, 5, 9, 18, 3, 22, 7], [11, 4, 30]
    result = attribute(ComponentRunner(model, layers), find_final_norm(model, layers, clean), clean, tokens)
    with torch.no_grad():
        logits = model(torch.tensor([clean])).logits[0, -1].double()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.atanh(logits / cap)
    assert (result.total() - logits[tokens]).abs().max() < 1e-4
    assert result.n_heads == (0 if arch == "gpt2" else model.config.num_attention_heads)
    assert result.head_deviation() < 1e-4
    assert result.parallel == (arch in ("gptj", "gpt_neox"))
    effects = exact(ComponentRunner(model, layers), clean, corrupted, (11, 4), batch_size=16)
    parts = blocks(layers)

    def logit_diff(ids, hook_module=None, value=None, position=None):
        handle = None
        if hook_module is not None:
            def write(module, args, output):
                by_position(output, 1, len(ids))[0, position] = value
            handle = hook_module.register_forward_hook(write)
        with torch.no_grad():
            out = model(torch.tensor([ids])).logits[0, -1]
        if handle:
            handle.remove()
        return float(out[11] - out[4])

    def output_of(module, ids):
        seen = {}
        handle = module.register_forward_hook(lambda m, a, o: seen.__setitem__("v", by_position(o, 1, len(ids))[0, 3].clone()))
        with torch.no_grad():
            model(torch.tensor([ids]))
        handle.remove()
        return seen["v"]

    ld_clean, ld_corrupted = logit_diff(clean), logit_diff(corrupted)
    for kind, module in (("mlp", parts[0].mlp), ("attention", parts[1].attention)):
        layer = 0 if kind == "mlp" else 1
        patched = logit_diff(corrupted, module, output_of(module, clean), 3)
        assert float(effects[f"L{layer}.{kind}"][3]) == pytest.approx((patched - ld_corrupted) / (ld_clean - ld_corrupted), abs=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_final_norm_is_found_through_the_last_layer_alone(arch, arch_dirs, monkeypatch):
    """Tracing what feeds the output embedding runs the last decoder layer only (a model read
    from its file reads one layer's weights, not all), and finds the module a trace of the
    whole model finds, which a model whose forward fails on one layer falls back to."""
    import torch
    from transformers import AutoModelForCausalLM

    import workflow.model.backends as backends

    model = AutoModelForCausalLM.from_pretrained(arch_dirs[arch], dtype=torch.float32).eval()
    n_layers = getattr(model.config, "num_hidden_layers", None) or model.config.n_layer
    layers = backends.find_decoder_layers(model, n_layers)
    before = [id(layer) for layer in layers]
    ran = []
    handles = [layer.register_forward_pre_hook(lambda module, args, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    found = backends.find_final_norm(model, layers, [1, 5, 9, 14])
    assert ran == [n_layers - 1]
    assert [id(layer) for layer in layers] == before  # every layer back in place

    def fails(layers):
        raise IndexError("this model's forward indexes every layer")

    ran.clear()
    monkeypatch.setattr(backends, "_last_layer_only", fails)
    whole = backends.find_final_norm(model, layers, [1, 5, 9, 14])
    for handle in handles:
        handle.remove()
    assert ran == list(range(n_layers))
    assert found is whole and not isinstance(found, torch.nn.Identity)

"""weights: quantised — a GGUF model run from its file, each module's weights read and
dequantised just before use (workflow/gguf/weights.py).

The records must be those of the same file prepared as float32 safetensors (the weights are
made by the same rules); the prepared folder must hold no weights; what is read must be
what the run uses (an embedding's rows, the experts tokens are routed to); every
quantisation type gguf-py dequantises must give gguf-py's values when read in parts.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pipeline import REPO
from workflow.base.errors import UserError
from workflow.lens.run import read_probes
from workflow.config.settings import LensSettings
from workflow.model.load import load_model
from workflow.gguf.prepare import prepare_model

def assert_same_rows(dequantised: list[dict], quantised: list[dict], tolerance: float) -> None:
    """The records of a run from the file against those of the same file's dequantised weights."""
    assert len(quantised) == len(dequantised) > 0
    for a, b in zip(dequantised, quantised):
        assert (a["layer"], a["position"], a["lens"]) == (b["layer"], b["position"], b["lens"])
        assert a["top1_token"] == b["top1_token"], (a["layer"], a["position"])
        for column in ("top1_prob", "answer_prob", "entropy"):
            assert b[column] == pytest.approx(a[column], abs=tolerance), (column, a["layer"], a["position"])


def test_the_embedded_q4_k_m_gemma_read_from_its_file_gives_the_committed_records(tmp_path):
    """A real K-quant file (Q4_K and Q6_K blocks, a tied 262k-row embedding) read from the
    file gives the logit-lens records the pipeline committed for it from its dequantised
    weights (results/001; rounded to six digits there, and machines differ by about 1e-5)."""
    from workflow.config.probes import load
    from workflow.lens.records import read_records

    key = "gemma-3-270m"
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    entry = {**config["models"][key], "weights": "quantised"}
    folder = tmp_path / "quantised"
    prepare_model(key, entry, folder)
    model = load_model(key, entry, folder, device="cpu", dtype="float32")
    probes = load(config["probes"], REPO)
    read = read_probes(model, probes, LensSettings.from_config(config["lens"]))
    committed = read_records(REPO / "results" / "001" / f"output-{key}-records.csv")
    committed = committed[committed["lens"] == "logit"].to_dict("records")
    assert len(read.rows) == len(committed) > 0
    for ours, theirs in zip(read.rows, committed):
        assert (ours["probe"], ours["layer"], ours["position"]) == (theirs["probe"], theirs["layer"], theirs["position"])
        assert ours["top1_token"] == theirs["top1_token"], (ours["probe"], ours["layer"], ours["position"])
        for column in ("top1_prob", "answer_prob"):
            assert ours[column] == pytest.approx(theirs[column], abs=1e-4), (column, ours["probe"], ours["layer"])
    # The package assembles the file: kept in the prepared folder, the only copy.
    manifest = yaml.safe_load((folder / "manifest.json").read_text())
    assert manifest["gguf_path"] == str((folder / "model.gguf").resolve())
    # Beside it: the tokenizer (33 MB of JSON for 262k tokens, whatever the model's size) and
    # under a megabyte of config and manifest; no weights.
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != "model.gguf"}
    assert sum(size for name, size in sizes.items() if not name.startswith("tokenizer")) < 2**20, sizes
    assert not [name for name in sizes if name.endswith((".safetensors", ".bin", ".pt"))]


def test_weights_applies_to_gguf_sources_only():
    from workflow.config.schema import check_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["models"] = {"m": {"source": "local", "path": "/x", "weights": "quantised"}}
    with pytest.raises(UserError, match=r"models\.m\.weights applies to GGUF files .* source 'local'; remove the key"):
        check_config(config, "c.yaml")


def quant_types():
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import _type_traits

    return sorted({Q.F16, *_type_traits} - {Q.F32}, key=lambda t: t.value)


@pytest.mark.parametrize("qtype", quant_types(), ids=lambda t: t.name)
def test_every_quantisation_type_read_in_parts_gives_gguf_py_values(qtype, tmp_path):
    """An expert's slice and an embedding's rows, read alone from the file, dequantise to
    gguf-py's dequantisation of the whole tensor, for every type gguf-py dequantises.
    Blocks are gguf-py's own quantisation where it has one, else random bytes (every
    byte pattern is a valid block; a NaN scale is the same NaN both ways)."""
    import gguf
    from gguf import GGML_QUANT_SIZES

    from gguf_writer import finish
    from workflow.gguf.arch import Experts, Plan, Take
    from workflow.gguf.file import read_header
    from workflow.gguf.weights import FileWeights

    block, block_bytes = GGML_QUANT_SIZES[qtype]
    experts, rows, columns = 3, 4, 2 * max(block, 256)
    rng = np.random.default_rng(qtype.value)
    values = rng.standard_normal((experts, rows, columns)).astype(np.float32)
    try:
        raw = gguf.quants.quantize(values, qtype)
    except NotImplementedError:
        raw = rng.integers(0, 256, (experts, rows, columns // block * block_bytes), dtype=np.uint8)
    path = tmp_path / "types.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("ffn_down_exps.weight", raw, raw_dtype=qtype)
    writer.add_tensor("token_embd.weight", raw[0], raw_dtype=qtype)
    finish(writer)
    whole = gguf.quants.dequantize(raw, qtype)
    plan = Plan({"experts": Experts(("ffn_down_exps.weight",)), "embed": Take("token_embd.weight")}, (), {})
    weights = FileWeights(path, read_header(path), plan, None, dtype=__import__("torch").float32)
    for expert in range(experts):
        np.testing.assert_array_equal(weights.expert("experts", expert).numpy(), whole[expert])
    np.testing.assert_array_equal(weights.rows("embed", [3, 1]).numpy(), whole[0][[3, 1]])
    np.testing.assert_array_equal(weights["experts"].numpy(), whole)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_the_native_dequantisation_gives_gguf_py_bits(name, tmp_path):
    """workflow/native/dequant.c, which reads Q4_K_M, Q5_K_M, Q6_K and Q8_0 files: the same
    bits as gguf-py (NaNs from random scales included), on 4096 random rows of blocks, built
    for this processor and, on x86-64, for the baseline instruction set."""
    import platform

    import gguf
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from workflow.native.dequant import build, dequantise, load

    kind = GGMLQuantizationType[name]
    block, size = GGML_QUANT_SIZES[kind]
    raw = np.random.default_rng(kind.value).integers(0, 256, (4096, 1024 // block * size), dtype=np.uint8)
    expected = gguf.quants.dequantize(raw, kind).view(np.uint32)
    native = dequantise(raw, int(kind))
    assert native is not None, "the dequantisation kernel did not build"
    np.testing.assert_array_equal(native.view(np.uint32), expected)
    if platform.machine() in ("x86_64", "AMD64"):
        baseline = load(build(directory=tmp_path, march="x86-64"))
        np.testing.assert_array_equal(dequantise(raw, int(kind), baseline).view(np.uint32), expected)


def test_a_gguf_published_in_parts_is_refused_with_the_merge_command(tmp_path):
    """Large models come split (``-00001-of-00002.gguf``); a part alone lacks most tensors,
    which would read as a file that does not fit its architecture."""
    import gguf

    from gguf_writer import finish
    from workflow.gguf.prepare import check_gguf_supported

    path = tmp_path / "model-00001-of-00002.gguf"
    writer = gguf.GGUFWriter(str(path), "llama4")
    writer.add_uint16("split.no", 0)
    writer.add_uint16("split.count", 2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    finish(writer)
    with pytest.raises(UserError, match=r"model 'scout': .*model-00001-of-00002\.gguf.* is part 1 of a GGUF model "
                                        r"published in 2 parts.*llama-gguf-split --merge FIRST-PART\.gguf MERGED\.gguf"):
        check_gguf_supported("scout", path)


def test_a_model_built_without_weights_fills_no_parameter_and_keeps_its_buffers(monkeypatch):
    """The model a file is read into is built without filling its parameters (Llama 4's
    experts ask torch.zeros for 5.4 GB a layer at Scout's width), its buffers those of the
    model built as usual, and a buffer torch.zeros made holds zeros."""
    import torch
    from transformers import AutoModelForCausalLM

    from tiny import architecture_configs, make_tokenizer
    from workflow.gguf import weights

    original = torch.zeros
    with weights._unfilled_zeros() as made:
        small, large = torch.zeros(3), torch.zeros(1024, 1024)
    assert torch.zeros is original
    assert len(made) == 1 and made[0] is large and small.eq(0).all() and large.shape == (1024, 1024)

    class WithBuffer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.zeros(2048, 1024), persistent=False)

    with weights._unfilled_zeros() as made:
        module = WithBuffer()
    module.table.fill_(7.0)  # what uninitialised memory may hold
    weights._fill_buffers(module, made)
    assert module.table.eq(0).all()

    config = architecture_configs(make_tokenizer())["llama4"]
    monkeypatch.setattr(weights, "UNFILLED_ZEROS", 1)  # every torch.zeros of the tiny model unfilled
    empty = weights._empty_model(config, torch.float32)
    assert {p.device.type for p in empty.parameters()} == {"meta"}
    built = dict(AutoModelForCausalLM.from_config(config).named_buffers())
    assert built.keys() == dict(empty.named_buffers()).keys() and built  # the rotary tables
    for name, buffer in empty.named_buffers():
        assert torch.equal(buffer, built[name]), name

"""The llama.cpp backend's core (workflow/model/llamacpp.py): the residual stream captured
from llama.cpp's compute graph at every layer and patched there, checked against
independent computations.

- The embedded models' GGUF files as users run them (Gemma 3 270M Q4_K_M, SmolLM2 Q4_1):
  layer 0 is the token embedding rows as the architecture scales them, to the bit; the last
  layer through the model's final norm and unembedding in NumPy (float64) gives llama.cpp's
  own logits within the bound its activation rounding allows (``matmul_rounding_bound``),
  and a residual one position off does not; patching a layer with another prompt's residuals
  gives that prompt's logits, to the bit; llama.cpp tokenises as the project does.
- A tiny random Llama written by llama.cpp's own converter in float32: every layer agrees
  with the PyTorch forward-hooks backend on the same prepared GGUF, the project's lens head
  on the last layer gives llama.cpp's logits, and a patch at one position agrees with the
  PyTorch patching (``BlockRunner``).
- Failures are never silent: an error inside the evaluation callback fails the run after the
  decode, naming it; an architecture whose graph names no ``l_out-N`` is refused.
- llama.cpp's asking about every graph node is answered in C (workflow/native/graph_filter.c):
  Python is entered only for the tensors read or written, handing over never stops the graph,
  and the numbers are those of the callback in Python, to the bit.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the llama.cpp backend needs it)")

from pipeline import REPO, prepared_model  # noqa: E402
from tiny import save_random  # noqa: E402
from test_gguf_architectures import ENGINE_FLOAT32, PROBE, assert_same_records, convert, engine_tolerances  # noqa: E402
from gguf_writer import finish  # noqa: E402
from workflow.model.backends import Patches  # noqa: E402
from workflow.base.errors import UserError  # noqa: E402
from workflow.gguf.file import read_header  # noqa: E402
from workflow.lens.session import tokenize_probe  # noqa: E402
from workflow.model.llamacpp import FLOAT_TERM, FastRoundingBound, LlamaCppModel, LlamaCppRunError, matmul_rounding_bound  # noqa: E402
from workflow.model.load import load_model  # noqa: E402
from workflow.gguf.prepare import locate_gguf, prepare_model  # noqa: E402

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
EMBEDDED = ("gemma-3-270m", "smollm2-135m-instruct")
LAYER_ZERO = {"gemma3": "inp_scaled", "llama": "embd"}  # Gemma scales its embedding by sqrt(d)


def probe_texts() -> list[tuple[str, str]]:
    """(prompt, answer) of every default probe and patching prompt."""
    texts = [(p["prompt"], p["answer"]) for p in CONFIG["probes"]]
    for pair in CONFIG["patching"]["pairs"]:
        texts += [(pair["clean"], pair["clean_answer"]), (pair["corrupted"], pair["corrupted_answer"])]
    return texts


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Each embedded model's GGUF file opened by llama.cpp, once for this module: key ->
    (file, LlamaCppModel)."""
    opened = {}

    def open_model(key: str):
        if key not in opened:
            path = locate_gguf(key, CONFIG["models"][key], tmp_path_factory.mktemp("gguf"))
            opened[key] = (path, LlamaCppModel(path, key=key))
        return opened[key]

    yield open_model
    for _, model in opened.values():
        model.close()


def gguf_tensor(path: Path, name: str, rows=None) -> tuple[np.ndarray, str]:
    """A GGUF tensor's values [rows, width] as llama.cpp dequantises them (only ``rows``
    where given), and its type's name. The project's header reader finds it (gguf-py's
    reader parses a 262k-token vocabulary for seconds); the native kernel gives gguf-py's
    bits, faster."""
    import gguf

    from workflow.native.dequant import dequantise

    entry = next(t for t in read_header(path).table if t.name == name)
    kind = gguf.GGMLQuantizationType(entry.ggml_type)
    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    width = entry.dims[0]
    raw = np.memmap(path, np.uint8, "r", offset=entry.offset, shape=(entry.elements // width, width // block * block_bytes))
    raw = np.ascontiguousarray(raw if rows is None else raw[rows])
    values = dequantise(raw, entry.ggml_type)
    if values is None:
        values = gguf.dequantize(raw, kind)
    return np.asarray(values, dtype=np.float32).reshape(-1, width), kind.name


# ---------------------------------------------------------------------------- embedded models


@pytest.mark.parametrize("key", EMBEDDED)
def test_layer_zero_is_the_token_embedding_as_the_architecture_scales_it(key, embedded):
    """What the PyTorch backends call layer 0 (the residual entering the first block): the
    embedding rows, times sqrt(d) for Gemma, to the bit."""
    path, model = embedded(key)
    assert model.layer_names == [LAYER_ZERO[model.architecture]] + [f"l_out-{i}" for i in range(model.n_layers)]
    ids = model.tokenize(CONFIG["probes"][0]["prompt"])
    rows, _ = gguf_tensor(path, "token_embd.weight", ids)
    if model.architecture == "gemma3":
        rows = rows * np.float32(np.sqrt(np.float32(model.d_model)))
    np.testing.assert_array_equal(model.run(ids, layers=[0]).layer(0), rows)


@pytest.mark.parametrize("key", EMBEDDED)
def test_the_last_layer_through_the_final_norm_and_unembedding_gives_llamacpps_logits(key, embedded):
    """At every position, within the bound llama.cpp's rounding of the activations to 8-bit
    blocks allows (``matmul_rounding_bound``: both files' unembeddings are Q8_0, so the
    activations are rounded in blocks of 32); the bound is not loose enough to let a
    residual one position off pass."""
    path, model = embedded(key)
    ids = model.tokenize(CONFIG["probes"][0]["prompt"])
    run = model.run(ids, layers=[model.n_layers])
    names = {t.name for t in read_header(path).table}
    weight, kind = gguf_tensor(path, "output.weight" if "output.weight" in names else "token_embd.weight")
    norm = gguf_tensor(path, "output_norm.weight")[0][0].astype(np.float64)
    metadata = read_header(path).metadata
    assert "final_logit_softcapping" not in metadata

    hidden = run.layer(model.n_layers).astype(np.float64)
    normed = hidden / np.sqrt((hidden**2).mean(-1, keepdims=True) + metadata["attention.layer_norm_rms_epsilon"]) * norm
    exact = np.concatenate([normed @ weight[start : start + 16384].T.astype(np.float64)
                            for start in range(0, len(weight), 16384)], axis=1)
    bound = matmul_rounding_bound(weight, kind, normed)
    assert (np.abs(run.logits - exact) <= bound).all(), float((np.abs(run.logits - exact) / bound).max())
    assert not (np.abs(run.logits[1:] - exact[:-1]) <= bound[:-1]).all()


@pytest.mark.parametrize("key", EMBEDDED)
def test_llamacpp_tokenises_the_probes_as_the_project_does(key, embedded, tmp_path_factory):
    from transformers import AutoTokenizer

    _, model = embedded(key)
    tokenizer = AutoTokenizer.from_pretrained(prepared_model(key, tmp_path_factory))
    for prompt, answer in probe_texts():
        ids, answer_ids = tokenize_probe(tokenizer, {"id": "p", "prompt": prompt, "answer": answer})
        assert model.tokenize(prompt) == ids, prompt
        assert model.tokenize(answer, add_special=False) == answer_ids, answer


def test_capturing_some_layers_gives_what_capturing_all_gives(embedded):
    _, model = embedded("gemma-3-270m")
    ids = model.tokenize(CONFIG["probes"][0]["prompt"])
    every = model.run(ids)
    assert every.residuals.shape == (model.n_layers + 1, len(ids), model.d_model)
    assert every.logits.shape == (len(ids), model.vocab_size)
    some = model.run(ids, layers=[7, 3])
    np.testing.assert_array_equal(some.residuals, every.residuals[[7, 3]])
    np.testing.assert_array_equal(some.logits, every.logits)  # capturing does not change the numbers
    np.testing.assert_array_equal(model.run(ids, layers=[]).logits, every.logits)


@pytest.mark.parametrize("read_from", [-1, 3])
def test_the_positions_read_alone_are_what_every_position_gives_there(read_from, embedded):
    """Asked for the logits of the last position (-1), or of positions 3.., alone, llama.cpp
    computes its last block on those rows alone: every layer before it the same numbers, the
    last block's products in another shape, so its output within float32 rounding of a
    reordered sum (seen: 7e-8 of the layer's largest value), and the logits from it."""
    _, model = embedded("gemma-3-270m")
    ids = model.tokenize(CONFIG["probes"][0]["prompt"])
    every = model.run(ids)
    kept = slice(read_from % len(ids), None)
    n = len(ids) - kept.start
    last = model.run(ids, read_from=read_from)
    assert last.residuals.shape == (model.n_layers + 1, n, model.d_model)
    assert last.logits.shape == (n, model.vocab_size)
    np.testing.assert_array_equal(last.residuals[:-1], every.residuals[:-1, kept])
    scale = np.abs(every.residuals[-1, kept]).max()
    np.testing.assert_allclose(last.residuals[-1], every.residuals[-1, kept], rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(last.logits, every.logits[kept], rtol=0, atol=1e-5 * np.abs(every.logits[kept]).max())
    # A patch of the last block's output at a position before those read changes nothing
    # read: its row is one llama.cpp dropped.
    patched = model.run(ids, layers=[model.n_layers], patches=[(model.n_layers, 1, np.zeros(model.d_model))],
                        read_from=read_from)
    np.testing.assert_array_equal(patched.logits, last.logits)


@pytest.mark.parametrize("layer", [0, 9, 18])
def test_patching_every_position_of_a_layer_gives_the_other_prompts_logits(layer, embedded):
    """Every position of layer ``layer`` written with another prompt's: from there on the
    run is that prompt's, to the bit (the layers before are its own)."""
    _, model = embedded("gemma-3-270m")
    pair = CONFIG["patching"]["pairs"][0]
    clean, corrupted = model.tokenize(pair["clean"]), model.tokenize(pair["corrupted"])
    assert len(clean) == len(corrupted)
    source, target = model.run(corrupted), model.run(clean)
    assert not np.array_equal(source.logits, target.logits)
    patched = model.run(clean, patches=[(layer, p, source.layer(layer)[p]) for p in range(len(clean))])
    np.testing.assert_array_equal(patched.logits, source.logits)
    np.testing.assert_array_equal(patched.residuals[layer:], source.residuals[layer:])
    np.testing.assert_array_equal(patched.residuals[:layer], target.residuals[:layer])


# ---------------------------------------------------------------------------- failures


def test_an_error_in_the_callback_fails_the_run_naming_it(embedded, monkeypatch):
    """llama.cpp would skip the rest of the graph silently, its decode still succeeding: the
    run raises after the decode, naming what went wrong, and the next run is unharmed."""
    _, model = embedded("gemma-3-270m")
    ids = model.tokenize(CONFIG["probes"][0]["prompt"])
    want = model.run(ids, layers=[])
    with pytest.raises(LlamaCppRunError, match=r"a patch of l_out-3 at position 1 has shape \[5\]; the residual stream there is \[640\]"):
        model.run(ids, patches=[(4, 1, np.zeros(5))])
    with pytest.raises(LlamaCppRunError, match=r"a patch of l_out-3 is at position 99; the sequence has positions 0\.\.5"):
        model.run(ids, patches=[(4, 99, np.zeros(model.d_model))])

    def broken(self, work, pointer, tensor, name):
        raise RuntimeError(f"injected while handling {name}")

    monkeypatch.setattr(LlamaCppModel, "_handle", broken)
    with pytest.raises(LlamaCppRunError, match=r"failed in its evaluation callback: RuntimeError: injected while handling inp_scaled"):
        model.run(ids)
    monkeypatch.undo()
    np.testing.assert_array_equal(model.run(ids, layers=[]).logits, want.logits)


def test_a_run_started_from_inside_a_run_fails_the_outer_run(embedded, monkeypatch):
    """One decode at a time: the callback state is the model's."""
    _, model = embedded("gemma-3-270m")
    ids = model.tokenize(CONFIG["probes"][0]["prompt"])

    def nested(self, work, pointer, tensor, name):
        model.run(ids, layers=[])

    monkeypatch.setattr(LlamaCppModel, "_handle", nested)
    with pytest.raises(LlamaCppRunError, match=r"RuntimeError: model 'gemma-3-270m': a llama\.cpp run is already under way"):
        model.run(ids, layers=[1])


# ---------------------------------------------------------------------------- the asking, in C


def test_the_c_filter_answers_llamacpps_asking_and_always_lets_the_graph_go_on():
    """graph_filter.c by itself, on a tensor of ggml's layout: asked about a node, it says yes
    to the names wanted alone; with ``every`` it passes the asking on to Python; handing a
    tensor over it returns true even where Python's callback returned false (a false would
    skip the rest of the graph split)."""
    import ctypes

    from workflow.model.llamacpp import GGMLTensor
    from workflow.native import graph_filter
    from workflow.native.build import UNAVAILABLE

    try:
        library = graph_filter.load(graph_filter.build())
    except UNAVAILABLE as error:
        pytest.skip(f"the C filter cannot be built here ({error})")
    seen = []

    def python_side(pointer, ask, user_data):
        seen.append((GGMLTensor.from_address(pointer).name.decode(), bool(ask)))
        return False

    callback_type = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)
    handle = callback_type(python_side)
    chosen = graph_filter.GraphFilter(library, handle, callback_type, GGMLTensor.name.offset)
    tensors = {name: GGMLTensor() for name in ("l_out-3", "l_out-30", "attn_norm-3", "embd")}
    for name, tensor in tensors.items():
        tensor.name = name.encode()

    def evaluate(name, ask):
        return chosen.callback(ctypes.addressof(tensors[name]), ask, chosen.user_data)

    chosen.want({"l_out-3", "embd"})
    assert [evaluate(name, True) for name in tensors] == [True, False, False, True]
    assert seen == []  # asking never entered Python
    assert evaluate("l_out-3", False) is True and seen == [("l_out-3", False)]
    chosen.want({"l_out-3"}, every=True)
    assert evaluate("attn_norm-3", True) is False and seen[-1] == ("attn_norm-3", True)
    chosen.want(["x" * graph_filter.NAME])  # a name the state cannot hold: Python is asked
    assert evaluate("embd", True) is False and seen[-1] == ("embd", True)
    chosen.want(())
    assert not any(evaluate(name, True) for name in tensors)


def test_python_is_entered_for_the_tensors_wanted_alone_and_the_numbers_are_the_same(embedded, monkeypatch):
    """With the C filter, llama.cpp's asking about each of Gemma's graph nodes never enters
    Python: its callback runs once per tensor read or written. The residuals, patches and
    logits are those of the callback in Python alone, to the bit; and llama.cpp with no
    callback at all (``observe=False``, the benchmark's baseline) gives the same logits."""
    path, model = embedded("gemma-3-270m")
    if model._filter is None:
        pytest.skip("the C filter cannot be built here: the callback in Python runs alone")
    ids = model.tokenize(CONFIG["probes"][0]["prompt"])
    patches = [(5, 2, np.full(model.d_model, 0.5, dtype=np.float32))]
    entered = []
    evaluate = LlamaCppModel._evaluate

    def counted(self, pointer, ask, user_data):
        entered.append(bool(ask))
        return evaluate(self, pointer, ask, user_data)

    monkeypatch.setattr(LlamaCppModel, "_evaluate", counted)
    filtered = LlamaCppModel(path, key="filtered")
    entered.clear()
    run = filtered.run(ids, layers=[1, 5, 9], patches=patches)
    assert entered == [False] * 3  # layers 1 and 9 read, layer 5 written then read
    entered.clear()
    plain = filtered.run(ids, layers=[])
    assert entered == []
    filtered.close()
    monkeypatch.setenv("LAYERWISE_LENS_KERNEL", "torch")
    python_alone = LlamaCppModel(path, key="python")
    assert python_alone._filter is None
    entered.clear()
    reference = python_alone.run(ids, layers=[1, 5, 9], patches=patches)
    assert entered.count(True) > 20 * model.n_layers  # every node asked about, in Python
    python_alone.close()
    np.testing.assert_array_equal(run.residuals, reference.residuals)
    np.testing.assert_array_equal(run.logits, reference.logits)
    unobserved = LlamaCppModel(path, key="plain", observe=False)
    try:
        np.testing.assert_array_equal(unobserved.run(ids, layers=[]).logits, plain.logits)
        with pytest.raises(ValueError, match="observe=False: its runs read and write no layer"):
            unobserved.run(ids, layers=[1])
    finally:
        unobserved.close()


def test_an_unknown_cache_type_is_refused_before_loading(tmp_path):
    with pytest.raises(UserError, match=r"model 'm': cache type 'q4' is not one of f32, f16"):
        LlamaCppModel(write_bert(tmp_path / "bert.gguf"), cache_type="q4", key="m")


def write_bert(path: Path, drop: str = "") -> Path:
    """A one-block BERT (an encoder llama.cpp runs whose graph names no l_out-N), random
    float32 weights, written with gguf-py; without tensor ``drop`` where given."""
    import gguf

    width, words = 8, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "capital", "of"]
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_block_count(1)
    writer.add_context_length(32)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(2 * width)
    writer.add_head_count(2)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.CLS)
    writer.add_token_type_count(2)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(words)
    writer.add_token_types([gguf.TokenType.CONTROL] * 5 + [gguf.TokenType.NORMAL] * 3)
    for add, token in ((writer.add_pad_token_id, 0), (writer.add_unk_token_id, 1), (writer.add_bos_token_id, 2),
                       (writer.add_eos_token_id, 3), (writer.add_sep_token_id, 3)):
        add(token)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(words), width), "token_types.weight": (2, width), "position_embd.weight": (32, width),
              "blk.0.attn_output.weight": (width, width), "blk.0.ffn_up.weight": (2 * width, width),
              "blk.0.ffn_down.weight": (width, 2 * width)}
    shapes.update({f"blk.0.attn_{n}.{kind}": (width, width) if kind == "weight" else (width,) for n in "qkv" for kind in ("weight", "bias")})
    for name, shape in shapes.items():
        if name != drop:
            writer.add_tensor(name, rng.normal(0, 0.3, shape).astype(np.float32))
    for norm in ("token_embd_norm", "blk.0.attn_output_norm", "blk.0.layer_output_norm"):
        writer.add_tensor(f"{norm}.weight", np.ones(width, np.float32))
        writer.add_tensor(f"{norm}.bias", np.zeros(width, np.float32))
    finish(writer)
    return path


def test_an_architecture_whose_graph_names_no_block_outputs_is_refused_naming_it(tmp_path):
    path = write_bert(tmp_path / "bert.gguf")
    with pytest.raises(UserError, match=r"graph for architecture 'bert' names no l_out-0, the output of each block"):
        LlamaCppModel(path, key="encoder")


def test_a_file_llamacpp_cannot_load_is_refused_with_its_reason(tmp_path):
    path = write_bert(tmp_path / "bert.gguf", drop="blk.0.ffn_up.weight")
    with pytest.raises(UserError, match=r"model 'encoder': llama\.cpp cannot load .*bert\.gguf.*"
                                        r"tensor 'blk\.0\.ffn_up\.weight' not found; run this model with another backend"):
        LlamaCppModel(path, key="encoder")


# ---------------------------------------------------------------------------- a converted float32 Llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama converted to a float32 GGUF by llama.cpp's converter, prepared by
    the pipeline and loaded with the forward-hooks backend; and the file opened by llama.cpp
    twice: with float32 attention, and as llama.cpp runs it by default (half-precision keys
    and values). (hooks model, float32 llama.cpp, default llama.cpp)."""
    from transformers import AutoTokenizer, LlamaConfig

    # A tokenizer the converter recognises (its pre-tokenizer hash is in llama.cpp's list).
    tokenizer = AutoTokenizer.from_pretrained(prepared_model("smollm2-135m-instruct", tmp_path_factory))
    root = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    hf = save_random(root / "hf", config, tokenizer)
    gguf = root / "tiny-llama-f32.gguf"
    q8 = root / "tiny-llama-q8_0.gguf"
    convert([(hf, "f32", gguf), (hf, "q8_0", q8)])
    prepare_model("tiny", {"source": "gguf", "path": str(gguf)}, root / "prepared")
    prepare_model("tiny", {"source": "gguf", "path": str(q8)}, root / "prepared-q8")
    hooks = load_model("tiny", {"source": "local", "path": str(root / "prepared")}, None, device="cpu", dtype="float32",
                       backend="hooks")
    exact = LlamaCppModel(gguf, cache_type="f32", flash_attention=False, key="tiny")
    default = LlamaCppModel(gguf, key="tiny")
    TINY_FILES.update(f32=(gguf, root / "prepared"), q8_0=(q8, root / "prepared-q8"))
    yield hooks, exact, default
    exact.close()
    default.close()


TINY_FILES: dict[str, tuple[Path, Path]] = {}  # the tiny Llama's GGUF files and prepared folders, by type


def test_every_layer_agrees_with_the_pytorch_hooks_backend(tiny):
    """Float32 attention: float32 rounding only (seen: 5e-7 of the layer's largest value).
    llama.cpp's defaults round keys and values (and, in its CPU flash attention, queries)
    to half precision, 2^-11 relative, which the blocks carry on (seen: 2e-3)."""
    hooks, exact, default = tiny
    ids = hooks.tokenizer(PROBE["prompt"], add_special_tokens=True)["input_ids"]
    assert exact.tokenize(PROBE["prompt"]) == ids
    assert exact.layer_names[0] == "embd"
    want, _ = hooks.backend.capture(ids, "all")
    want = want.numpy()
    scale = np.abs(want).max(axis=(1, 2))
    for model, tolerance in ((exact, 1e-5), (default, 5e-3)):
        got = model.run(ids).residuals
        assert got.shape == want.shape
        deviation = np.abs(got - want).max(axis=(1, 2)) / scale
        assert (deviation <= tolerance).all(), (model.cache_type, deviation)
    np.testing.assert_array_equal(exact.run(ids, layers=[0]).layer(0), want[0])


def test_the_projects_lens_head_on_the_last_layer_gives_llamacpps_logits(tiny):
    """The hooks backend's own final norm and unembedding (float32 weights: llama.cpp rounds
    nothing, ``matmul_rounding_bound`` leaves float32 rounding) on llama.cpp's last layer."""
    hooks, exact, default = tiny
    ids = exact.tokenize(PROBE["prompt"])
    weight = hooks.backend.unembed.weight.detach().numpy()
    for model in (exact, default):
        run = model.run(ids, layers=[model.n_layers])
        with torch.no_grad():
            normed = hooks.backend.final_norm(torch.from_numpy(run.layer(model.n_layers)))
            lens = hooks.backend.unembed(normed).numpy()
        bound = matmul_rounding_bound(weight, "F32", normed.numpy())
        assert (np.abs(lens - run.logits) <= bound).all(), float(np.abs(lens - run.logits).max())


def test_a_patch_at_one_position_agrees_with_the_pytorch_patching(tiny):
    """Another prompt's residual written at one (layer, position): llama.cpp's logits at the
    last position against the hooks backend's ``BlockRunner`` run from that layer."""
    hooks, exact, _ = tiny
    pair = CONFIG["patching"]["pairs"][0]
    clean = exact.tokenize(pair["clean"])
    corrupted = exact.tokenize(pair["corrupted"])
    source = exact.run(corrupted)
    target, _ = hooks.backend.capture(clean, "all")
    position = 3  # the subject, where the prompts differ
    assert clean[position] != corrupted[position]
    for layer in (1, 2):
        value = torch.from_numpy(source.layer(layer)[position])
        patched = exact.run(clean, layers=[], patches=[(layer, position, value)])
        patches = Patches()
        patches.add(0, layer, position, value)
        last = hooks.backend.blocks.run(clean, target[layer][None], layer, patches)
        with torch.no_grad():
            want = hooks.backend.unembed(hooks.backend.final_norm(last)).numpy()[0]
        plain = exact.run(clean, layers=[]).logits[-1]
        assert np.abs(patched.logits[-1] - plain).max() > 1e-2  # the patch changes the answer's logits
        np.testing.assert_allclose(patched.logits[-1], want, atol=1e-4 * np.abs(want).max())
        alone = exact.run(clean, layers=[], patches=[(layer, position, value)], read_from=-1)  # as 002 runs it
        np.testing.assert_allclose(alone.logits[0], want, atol=1e-4 * np.abs(want).max())


# ---------------------------------------------------------------------------- backend: llamacpp


FLOAT32 = ENGINE_FLOAT32  # llama.cpp computing in float32 throughout


def backend_model(kind: str, settings: dict | None = None, key: str = "tiny"):
    """The tiny Llama's GGUF file of ``kind`` loaded as the pipeline loads it with
    ``backend: llamacpp``."""
    gguf, prepared = TINY_FILES[kind]
    entry = {"source": "gguf", "path": str(gguf), "backend": "llamacpp", **({"llamacpp": settings} if settings else {})}
    return load_model(key, entry, prepared, device="cpu", dtype="float32")


def probe_rows(model, probes=None):
    import pandas as pd

    from workflow.config.settings import LensSettings
    from workflow.lens.run import read_probes

    readings = read_probes(model, probes or CONFIG["probes"], LensSettings())
    return pd.DataFrame(readings.rows), readings


def test_experiment_001s_records_on_llamacpp_are_the_hooks_backends_on_a_float32_file(tiny):
    """The same records, row for row, as the forward-hooks backend on the same float32 file,
    for every default probe, within float32 rounding carried through four blocks
    (``engine_tolerances``; every family: tests/test_gguf_architectures.py), and the identity
    check held to llama.cpp's bound."""
    hooks, _, _ = tiny
    model = backend_model("f32", FLOAT32)
    assert model.backend.name == "llamacpp" and model.backend.output_type == "F32"
    _, want = probe_rows(hooks)
    _, readings = probe_rows(model)
    tolerance = engine_tolerances("llama", "f32")
    assert_same_records(readings.rows, want.rows, tolerance["prob"], tolerance["nats"])
    assert readings.identity_check["logit_diff_over_bound"] <= 1.0


def test_experiment_001_at_the_last_position_on_llamacpp_is_the_hooks_backends(tiny):
    """``positions: last``: llama.cpp runs its last block and head on the prompt's last
    position and the answer's alone (``capture_batch(from_read=True)``); the records, and
    001's scores of the whole answer teacher-forced over those positions, are the hooks
    backend's within float32 rounding, as at every position."""
    from workflow.config.settings import LensSettings
    from workflow.experiments.exp001.run import run_lens

    hooks, _, _ = tiny
    model = backend_model("f32", FLOAT32)
    settings = LensSettings(positions="last")
    probes = CONFIG["probes"] + [{"id": "long-answer", "prompt": "The Eiffel Tower stands in", "answer": " the city of Paris, France"}]
    assert any(len(hooks.tokenizer(p["answer"], add_special_tokens=False)["input_ids"]) > 1 for p in probes)  # answers of several tokens
    tolerance = engine_tolerances("llama", "f32")
    want_summary, want = run_lens(hooks, probes, settings)
    got_summary, got = run_lens(model, probes, settings)
    assert {row["position"] for row in got} == {row["position"] for row in want} and len(got) < 20 * len(probes)
    assert_same_records(got, want, tolerance["prob"], tolerance["nats"])
    for ours, theirs in zip(got_summary["probes"], want_summary["probes"]):
        assert abs(ours["answer_logprob"] - theirs["answer_logprob"]) <= tolerance["nats"], ours["id"]
        assert ours["answer_greedy"] == theirs["answer_greedy"]


def test_a_quantised_file_on_llamacpp_is_checked_against_the_bound_of_its_rounding(tiny):
    """Q8_0: llama.cpp rounds the activations of every product to 8-bit blocks, so its
    residuals and logits are not the PyTorch model's; the identity check allows exactly the
    unembedding's rounding bound, logit by logit, and fails a lens whose head is off by more."""
    from workflow.lens.session import LensIdentityError

    model = backend_model("q8_0")
    assert model.backend.output_type == "Q8_0"
    _, readings = probe_rows(model)
    assert 0 < readings.identity_check["logit_diff_over_bound"] <= 1.0
    # The same run with a head whose unembedding is 3% off: refused, naming the probe (1% is
    # within the bound on this model's logits).
    unembed = model.backend.unembed
    off = torch.nn.Linear(unembed.in_features, unembed.out_features, bias=False)
    off.weight.data = unembed.weight.data * 1.03
    model.backend.unembed = off
    with pytest.raises(LensIdentityError, match=r"probe 'capital-germany'.*logit_diff_over_bound = 1\.\d+ \(logit_diff"):
        probe_rows(model)


def test_generation_on_llamacpp_continues_its_own_cache_and_gives_the_hooks_backends_tokens(tiny):
    """Greedy generation with the lens on every token: llama.cpp's cache continued step by
    step gives the tokens, and the per-token traces, of the hooks backend on the float32 file."""
    from workflow.config.settings import LensSettings
    from workflow.lens.generation import LensGenerator

    hooks, _, _ = tiny
    model = backend_model("f32", FLOAT32)
    prompt = hooks.tokenizer(CONFIG["probes"][0]["prompt"])["input_ids"]
    settings = LensSettings(positions="last")
    want = LensGenerator(hooks, settings).generate(prompt, max_new_tokens=6, stop_ids=set())
    got = LensGenerator(model, settings).generate(prompt, max_new_tokens=6, stop_ids=set())
    assert got.token_ids == want.token_ids and len(got.tokens) == 6
    for a, b in zip(got.tokens, want.tokens):
        assert abs(a.model_prob - b.model_prob) <= 1e-5
        for x, y in zip(a.stats["logit"], b.stats["logit"]):
            assert x.topk_ids[0] == y.topk_ids[0] and abs(x.kl_to_final - y.kl_to_final) <= 1e-5


def test_a_probes_identity_check_on_llamacpp_is_the_same_whatever_it_was_read_with(tiny):
    """The lens's logits and llama.cpp's rounding bound are computed in products of one shape
    (``LensSession.check_identity``): a probe's identity figures, read alone or beside the
    other default probes, are equal to the bit."""
    from workflow.config.settings import LensSettings
    from workflow.lens.run import lens_batches
    from workflow.lens.session import LensSession

    model = backend_model("q8_0")
    probes = CONFIG["probes"]

    def deviations(chosen):
        session = LensSession(model, LensSettings())
        return {r.item.probe["id"]: r.deviation for batch in lens_batches(session, chosen) for r in batch.readings}

    together = deviations(probes)
    assert len(together) == len(probes)
    for probe in (probes[0], probes[-1]):
        alone = deviations([probe])[probe["id"]]
        assert alone == together[probe["id"]]
        assert 0 < alone["logit_diff_over_bound"] <= 1


def test_steps_decoded_together_share_one_bound_and_trace_as_steps_decoded_alone(tiny):
    """On a Q8_0 file (llama.cpp rounds, so every step is checked against its bound): steps
    the lens thread decodes together compute their bounds in one product, once per decoding,
    and give the traces, identity checks included, of steps decoded one by one."""
    from workflow.config.settings import LensSettings
    from workflow.lens.generation import LensGenerator

    model = backend_model("q8_0")
    prompt = model.tokenizer(CONFIG["probes"][0]["prompt"])["input_ids"]
    settings = LensSettings(positions="last")
    one = LensGenerator(model, settings, pending=1).generate(prompt, 6, stop_ids=set())
    many = LensGenerator(model, settings, pending=8)
    decodings, bounds = [], []
    decode, bound = many.decode, model.backend.logit_bound

    def slow_first(items):  # the first decoding held up, so that the next steps queue behind it
        decodings.append(len(items))
        if len(decodings) == 1:
            time.sleep(1.0)
        return decode(items)

    many.decode = slow_first
    model.backend.logit_bound = lambda normed: bounds.append(normed.shape[0]) or bound(normed)
    reply = many.generate(prompt, 6, stop_ids=set())
    assert one.token_ids == reply.token_ids
    assert [t.identity for t in one.tokens] == [t.identity for t in reply.tokens]
    assert 0 < max(t.identity["logit_diff_over_bound"] for t in reply.tokens) <= 1
    assert many.records(one, "a") == many.records(reply, "a")
    assert sum(decodings) == 6 and max(decodings) > 1
    assert len(bounds) == len(decodings) and set(bounds) == {8}  # one product of 8 rows a decoding


def test_the_llamacpp_backend_is_refused_while_planning_where_it_cannot_run(tmp_path):
    from workflow.config.schema import check_config

    config = {"backend": "auto", "probes": CONFIG["probes"], "models": {
        "hub": {"source": "hf", "repo": "x/y", "backend": "llamacpp"}}}
    with pytest.raises(UserError, match=r"models\.hub\.backend is llamacpp, which runs GGUF files.*source 'hf'"):
        check_config(config, "config/config.yaml")
    config = {"backend": "llamacpp", "probes": CONFIG["probes"], "models": {"hub": {"source": "hf", "repo": "x/y"}}}
    with pytest.raises(UserError, match=r"config/config.yaml: backend is llamacpp.*models\.hub\.backend: auto"):
        check_config(config, "config/config.yaml")
    config = {"backend": "auto", "probes": CONFIG["probes"], "models": {
        "g": {"source": "gguf", "path": "m.gguf", "llamacpp": {"n_threads": 2}}}}
    with pytest.raises(UserError, match=r"models\.g\.llamacpp applies to backend: llamacpp"):
        check_config(config, "config/config.yaml")


def test_the_pipeline_runs_experiment_001_on_llamacpp_and_switching_the_backend_replans_the_model(tiny, tmp_path):
    """``backend: llamacpp`` in the config: the tuned lens trained on llama.cpp's residuals and
    001's records and JSON made on llama.cpp (which the JSON says, with its identity check
    against llama.cpp's rounding bound); switching the backend plans exactly that model's jobs
    again, saying why."""
    import json

    from pipeline import planned_jobs, said, scratch_copy, snakemake

    gguf, _ = TINY_FILES["f32"]
    config = {**CONFIG, "backend": "llamacpp", "models": {"tiny": {"source": "gguf", "path": str(gguf), "llamacpp": FLOAT32}},
              "probes": CONFIG["probes"][:3], "tuned_lens": {**CONFIG["tuned_lens"], "train_sequences": 4, "heldout_positions": 64}}
    workdir = scratch_copy(tmp_path / "wd", config)
    result = snakemake(workdir, "results/001/output-tiny.json")
    assert result.returncode == 0, said(result)[-3000:]
    summary = json.loads((workdir / "results" / "001" / "output-tiny.json").read_text())
    assert summary["backend"] == "llamacpp" and summary["lenses"] == ["logit", "tuned"]
    assert summary["llamacpp"] == {"n_gpu_layers": 0, "cache_type": "f32", "flash_attention": False, "repack": True}
    assert 0 < summary["identity_check"]["logit_diff_over_bound"] <= 1.0
    config["backend"] = "hooks"
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump({**config, "models": {"tiny": {
        "source": "gguf", "path": str(gguf)}}}, sort_keys=False))
    plan = snakemake(workdir, "-n", "results/001/output-tiny.json")
    assert plan.returncode == 0, said(plan)[-3000:]
    assert set(planned_jobs(plan.stdout)) == {("train_tuned_lens", "tiny"), ("run_lens", "tiny")}, plan.stdout[-3000:]
    assert "backend" in plan.stdout


def test_experiment_002s_patching_through_llamacpps_graph_gives_the_pytorch_patchings_records(tiny):
    """Every patched run of 002 (both directions, every layer and position, the Gaussian
    trace) written into llama.cpp's graph from its callback, against the hooks backend's
    BlockRunner on the same float32 file: the same records within float32 rounding."""
    import pandas as pd

    from workflow.config.settings import LensSettings
    from workflow.experiments.exp002.patching import PatchingSettings
    from workflow.experiments.exp002.run import run_patching

    hooks, _, _ = tiny
    model = backend_model("f32", FLOAT32)
    settings = PatchingSettings(trace_samples=2)
    pairs = CONFIG["patching"]["pairs"][:2]
    want_summary, want = run_patching(hooks, pairs, settings, LensSettings())
    got_summary, got = run_patching(model, pairs, settings, LensSettings())
    want, got = pd.DataFrame(want), pd.DataFrame(got)
    assert list(got.columns) == list(want.columns) and len(got) == len(want) > 0
    for column in got.columns:
        if got[column].dtype.kind == "f":
            assert float((got[column] - want[column]).abs().max()) <= 1e-4, column
        else:
            assert (got[column].astype(str) == want[column].astype(str)).all(), column
    assert got_summary["identity_check"]["logit_diff_over_bound"] <= 1.0


@pytest.mark.parametrize("kind", ["Q8_0", "Q6_K", "F16", "F32"])
def test_the_float32_bound_the_backend_checks_with_is_never_below_the_derived_one(kind):
    """``FastRoundingBound`` (float32, raised by what float32 may round it by) against
    ``matmul_rounding_bound`` (float64): never below it; within 2 d 2^-24 above it for
    float weights, and for block-quantising ones within what taking each block's float32
    term through its largest activation adds (127 FLOAT_TERM / factor) and float32's
    rounding of d/B + 3 terms."""
    generator = np.random.default_rng(0)
    weight = (generator.standard_normal((40000, 512)) * generator.uniform(0.001, 3, (40000, 1))).astype(np.float32)
    x = generator.standard_normal((3, 512)) * generator.uniform(0.01, 50, (3, 512))
    fast = FastRoundingBound(torch.from_numpy(weight), kind)
    if fast.block is not None:
        # Rows whose activations all equal their block's largest in size: there taking the
        # float32 term through the largest adds nothing, and float32's rounding alone
        # separates the two bounds (without the raise, half the logits fell below).
        sizes = np.repeat(generator.uniform(0.01, 50, (2, 512 // fast.block)), fast.block, 1)
        x = np.concatenate([x, sizes * generator.choice([-1.0, 1.0], sizes.shape)])
    exact = matmul_rounding_bound(weight, kind, x)
    got = fast(x).numpy()
    assert (got >= exact).all()
    if fast.block is None:
        assert float((got / exact - 1).max()) <= 2 * 512 * 2.0**-24 * 1.01
    else:
        factor = 0.5 + (127 * 2.0**-11 if fast.block == 32 else 0.0)
        allowed = (1 + 127 * FLOAT_TERM / factor) * (1 + 2 * (512 // fast.block + 3) * 2.0**-24) - 1
        assert 127 * FLOAT_TERM / factor / 4 < float((got[:3] / exact[:3] - 1).max()) <= allowed
        # The raise (2 (d/B + 3) units of 2^-24) and float32's own error of at most half that.
        assert float((got[3:] / exact[3:] - 1).max()) <= 3 * (512 // fast.block + 3) * 2.0**-24
        assert fast.sums.shape == (40000, 512 // fast.block)  # 1/B of the weight, summed once


def test_weights_are_repacked_only_where_the_file_fits_half_the_memory(tiny, monkeypatch):
    """llama.cpp's CPU repacking copies the weights into memory of its own at load, so a file
    larger than the memory cannot load with it (bench/scout_width.py): by default it is used
    for a file of at most half the machine's memory, and the setting overrides that. With
    or without it, a Q8_0 file's logits agree within llama.cpp's own rounding."""
    import os

    from workflow.model import llamacpp

    q8, _ = TINY_FILES["q8_0"]
    size = q8.stat().st_size
    page = os.sysconf("SC_PAGE_SIZE")
    real = os.sysconf
    monkeypatch.setattr(llamacpp.os, "sysconf", lambda name: (2 * size - page) // page if name == "SC_PHYS_PAGES" else real(name))
    assert not llamacpp.repack_fits(q8)
    monkeypatch.setattr(llamacpp.os, "sysconf", lambda name: 2 * size // page + 1 if name == "SC_PHYS_PAGES" else real(name))
    assert llamacpp.repack_fits(q8)
    monkeypatch.undo()
    ids = None
    logits = {}
    for repack in (True, False):
        engine = LlamaCppModel(q8, repack=repack, key="tiny")
        assert engine.repack is repack and engine.settings()["repack"] is repack
        ids = ids or engine.tokenize(PROBE["prompt"])
        logits[repack] = engine.run(ids, layers=[]).logits
        engine.close()
    scale = np.abs(logits[True]).max()
    assert np.abs(logits[True] - logits[False]).max() <= 1e-2 * scale
    engine = LlamaCppModel(q8, key="tiny")
    assert engine.repack  # a file of kilobytes: repacked
    engine.close()


def test_the_patchscope_lens_on_llamacpp_writes_the_state_into_its_graph(tiny):
    """The patchscope lens (workflow/lens/patchscope.py) on the llama.cpp backend: the state
    written at the placeholder from the evaluation callback, the inspection prompt decoded on,
    against the same lens on the hooks backend (float32 file, float32 attention)."""
    from workflow.lens.patchscope import IDENTITY_PROMPT, INSPECTION_PROMPT, PatchscopeTranslator

    hooks, _, _ = tiny
    engine = backend_model("f32", FLOAT32)
    source = hooks.tokenizer(PROBE["prompt"], add_special_tokens=True)["input_ids"]
    residuals, _ = hooks.backend.capture(source, "all")
    # The placeholder last (the default), and before an arrow (a write the graph runs on past).
    for prompt, position in ((INSPECTION_PROMPT, -1), (IDENTITY_PROMPT, -2)):
        inspection = hooks.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        ours, theirs = PatchscopeTranslator(engine.backend, inspection, position), PatchscopeTranslator(hooks.backend, inspection, position)
        for layer in range(hooks.n_layers + 1):
            rows = residuals[layer, -3:]  # three positions at once, as the lens sends rows
            got, want = ours(rows, layer), theirs(rows, layer)
            assert got.shape == want.shape == rows.shape
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5 * float(want.abs().max()))
        assert float((ours(residuals[1, -1:], 1) - ours(residuals[1, -2:-1], 1)).abs().max()) > 1e-3  # the state matters


def test_experiment_005_on_llamacpp_gives_the_hooks_backends_records(tiny):
    """Experiment 005's run (three tasks, the logit and patchscope lenses) on llama.cpp: every
    record within float32 rounding of the same run on the forward-hooks backend, ranks within
    one (two tokens whose log-probabilities tie within that rounding may come in either order)."""
    from workflow.config.settings import LensSettings, PatchscopeSettings
    from workflow.experiments.exp005.run import WordsSettings, run_words
    from workflow.lens.session import LensSession

    hooks, _, _ = tiny
    engine = backend_model("f32", FLOAT32)
    settings = WordsSettings.from_config({"tasks": [{"kind": "translation", "source": "fr", "target": "de"},
                                                    {"kind": "repetition", "target": "fr"}, {"kind": "cloze", "target": "de"}],
                                          "max_words": 2, "demonstrations": 1})
    runs = {name: run_words(LensSession(model, LensSettings(positions="last"), patchscope=PatchscopeSettings()), settings)
            for name, model in (("hooks", hooks), ("llamacpp", engine))}
    (part, ours), (their_part, theirs) = runs["llamacpp"], runs["hooks"]
    assert part["tasks"] == their_part["tasks"] and part["lenses"] == ["logit", "patchscope"]
    assert len(ours) == len(theirs) == 6 * 2 * (hooks.n_layers + 1)
    for a, b in zip(ours, theirs):
        assert (a["task"], a["concept"], a["lens"], a["layer"]) == (b["task"], b["concept"], b["lens"], b["layer"])
        for role in ("target", "english", "source"):
            if b[f"{role}_prob"] == "":
                assert a[f"{role}_prob"] == ""
                continue
            assert a[f"{role}_prob"] == pytest.approx(b[f"{role}_prob"], abs=1e-6, rel=1e-4), (a, b)
            assert abs(a[f"{role}_rank"] - b[f"{role}_rank"]) <= 1, (a, b)

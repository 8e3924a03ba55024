"""Checks of the default run's results on the two embedded models against independent
computations, written once for two subjects: the committed results (tests/test_committed.py,
in the default suite) and a run of the pipeline from nothing (tests/test_e2e.py, `make
test-all`). A module imports the tests below and gives the fixture ``results_root``, the
folder holding that run's results/.

The final top-1 of every probe is checked against a plain transformers forward pass of the
same GGUF file, loaded independently of the pipeline; experiment 002's patching against that
model patched by forward hooks; experiment 004's attributions and component patching against
that model's logits and hooked forwards; the tuned lens's held-out quality against the logit lens's.
"""

import contextlib
import json

import pytest
import torch

from pipeline import REPO
from workflow.gguf.prepare import gguf_parsed_once, locate_gguf


@contextlib.contextmanager
def native_blocks():
    """gguf-py's ``dequantize`` served by the native kernel where it handles the type."""
    import gguf

    from workflow.native.dequant import dequantise

    original = gguf.dequantize

    def faster(data, qtype):
        out = dequantise(data, int(qtype)) if data.ndim else None
        return out if out is not None else original(data, qtype)

    gguf.dequantize = faster
    try:
        yield
    finally:
        gguf.dequantize = original


@pytest.fixture(scope="module")
def plain_transformers(tmp_path_factory):
    """Each embedded model's GGUF file loaded by transformers alone (its own GGUF reader, not
    the pipeline's), once per model for this module: (tokenizer, model)."""
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    loaded = {}

    def load(model):
        if model not in loaded:
            gguf = locate_gguf(model, config["models"][model], tmp_path_factory.mktemp("gguf"))
            # transformers reads the file three times (tokenizer, config, weights); its
            # reader parses it once for all three here, and the blocks of the types the
            # native kernel handles are dequantised by it (gguf-py's values to the bit:
            # tests/test_gguf_weights.py; gguf-py's Q4_K alone took 40 s of this test).
            # The names, shapes, permutations and config are transformers' own.
            with gguf_parsed_once(), native_blocks():
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            loaded[model] = (tok, hf)
        return loaded[model]

    return load


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_final_top1_matches_plain_transformers(results_root, plain_transformers, model):
    workdir = results_root
    summary = json.loads((workdir / "results" / "001" / f"output-{model}.json").read_text())
    tok, hf = plain_transformers(model)
    assert summary["identity_check"]["max_abs_prob_diff"] <= 1e-4
    for probe in summary["probes"]:
        ids = tok(probe["prompt"], return_tensors="pt").input_ids
        assert ids[0].tolist() == probe["input_ids"], probe["id"]
        with torch.no_grad():
            probs = hf(ids).logits[0, -1].float().softmax(-1)
        top1 = int(probs.argmax())
        assert probe["final_top1_token"] == tok.decode([top1]), probe["id"]
        assert probe["final_top1_prob"] == pytest.approx(float(probs[top1]), abs=1e-4), probe["id"]
        assert probe["final_answer_prob"] == pytest.approx(float(probs[probe["answer_token_id"]]), abs=1e-4)


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_tuned_lens_beats_the_logit_lens_on_held_out_text(results_root, model):
    """The tuned lens paper's result: lower KL to the final distribution at every layer but the last."""
    import csv

    workdir = results_root
    with open(workdir / "results" / "001" / f"lens-quality-{model}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kl = {(r["lens"], int(r["layer"])): float(r["kl_to_final"]) for r in rows}
    n_layers = max(layer for _, layer in kl)
    for layer in range(n_layers):
        assert kl[("tuned", layer)] < kl[("logit", layer)], (model, layer, kl[("tuned", layer)], kl[("logit", layer)])
    assert kl[("tuned", n_layers)] == pytest.approx(0.0, abs=1e-4) and kl[("logit", n_layers)] == pytest.approx(0.0, abs=1e-4)
    summary = json.loads((workdir / "results" / "001" / f"output-{model}.json").read_text())
    assert summary["lenses"] == ["logit", "tuned"]


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_patching_equals_plain_transformers_hooks(results_root, plain_transformers, model):
    """Experiment 002's recovered fractions against a plain transformers model loaded from the
    same GGUF file, patched with forward hooks on its own decoder layers, one full forward
    pass and the model's own logits per (layer, position): every position at five depths,
    both directions, for the first pair; and the exact 1 of the last cell."""
    from test_patching import reference_logit_diff, reference_residuals
    from workflow.experiments.exp002.records import read_patching_records

    workdir = results_root
    summary = json.loads((workdir / "results" / "002" / f"output-{model}.json").read_text())
    frame = read_patching_records(str(workdir / "results" / "002" / f"output-{model}-records.csv"), summary)
    _, hf = plain_transformers(model)
    pair = summary["pairs"][0]
    clean_ids, corrupted_ids = pair["clean_input_ids"], pair["corrupted_input_ids"]
    a, b = pair["clean_answer_token_id"], pair["corrupted_answer_token_id"]
    clean, corrupted = reference_residuals(hf, clean_ids), reference_residuals(hf, corrupted_ids)
    ld_clean, ld_corrupted = reference_logit_diff(hf, clean_ids, a, b), reference_logit_diff(hf, corrupted_ids, a, b)
    n_layers = summary["n_layers"]
    rows = frame[(frame.pair == pair["id"]) & (frame.corruption == "prompt")]
    got = {(r.direction, int(r.layer), int(r.position)): float(r.recovered) for r in rows.itertuples()}
    assert got[("denoise", n_layers, len(clean_ids) - 1)] == 1.0
    for layer in sorted({0, n_layers // 3, (2 * n_layers) // 3, n_layers - 1, n_layers}):
        for position in range(len(clean_ids)):
            ld = reference_logit_diff(hf, corrupted_ids, a, b, [(layer, position, clean[layer, position])])
            expected = (ld - ld_corrupted) / (ld_clean - ld_corrupted)
            assert got[("denoise", layer, position)] == pytest.approx(expected, abs=1e-3), (layer, position)
            ld = reference_logit_diff(hf, clean_ids, a, b, [(layer, position, corrupted[layer, position])])
            expected = (ld - ld_clean) / (ld_corrupted - ld_clean)
            assert got[("noise", layer, position)] == pytest.approx(expected, abs=1e-3), (layer, position)


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_components_equal_plain_transformers(results_root, plain_transformers, model):
    """Experiment 004 against a plain transformers model loaded from the same GGUF file, for the
    first pair: every block's attention and MLP shares plus the embedding's and the biases'
    add up to that model's logits (before a soft-cap) for each target; the competitor is its
    top other token; the five sites of largest recovered fraction, patched by forward hooks
    on its own modules (one full forward each), recover what the records say."""
    from test_exp004 import _clean_values, _patched_logit_diff
    from workflow.experiments.exp004.records import read_component_records

    summary = json.loads((results_root / "results" / "004" / f"output-{model}.json").read_text())
    frame = read_component_records(str(results_root / "results" / "004" / f"output-{model}-records.csv"), summary)
    _, hf = plain_transformers(model)
    pair = summary["pairs"][0]
    last = len(pair["clean_input_ids"]) - 1
    with torch.no_grad():
        logits = hf(torch.tensor([pair["clean_input_ids"]])).logits[0, -1].double()
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.atanh(logits / cap)
    rows = frame[(frame.pair == pair["id"]) & (frame.position == last) & frame.component.isin(["attention", "mlp"])]
    for target, t in pair["targets"].items():
        total = rows[f"dla_{target}"].sum() + t["dla_embedding"] + t["dla_constant"]
        assert total == pytest.approx(float(logits[t["token_id"]]), abs=2e-3), target
    answer = pair["targets"]["answer"]["token_id"]
    assert pair["targets"]["competitor"]["token_id"] == next(i for i in torch.argsort(logits, descending=True).tolist() if i != answer)
    answers = (answer, pair["targets"]["corrupted_answer"]["token_id"])
    span = pair["logit_diff_clean"] - pair["logit_diff_corrupted"]
    patched = frame[(frame.pair == pair["id"]) & frame.exact.notna()]
    for _, row in patched.reindex(patched.exact.abs().sort_values(ascending=False).index).head(5).iterrows():
        clean = _clean_values(hf, pair["clean_input_ids"], int(row.layer))
        value = clean["z"] if row.component.startswith("head") else clean[row.component]
        ld = _patched_logit_diff(hf, pair["corrupted_input_ids"], value, int(row.layer), row.component, int(row.position), answers)
        assert (ld - pair["logit_diff_corrupted"]) / span == pytest.approx(row.exact, abs=1e-3), row.to_dict()

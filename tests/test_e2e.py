"""The real default pipeline on the two embedded models, from an empty results/.

Slow (a few minutes: both models are dequantised from their GGUF files first).
The final top-1 of every probe is checked against a plain transformers forward
pass of the same GGUF file, loaded independently of the pipeline.
"""

import contextlib
import json

import pytest
import torch

from pipeline import REPO, files_under, said, scratch_copy, snakemake
from workflow.prepare import gguf_parsed_once, locate_gguf

pytestmark = pytest.mark.e2e

KINDS = [
    "evaluation-cross-model.md",
    "evaluation-gemma-3-270m.md",
    "evaluation-meta.md",
    "evaluation-smollm2-135m-instruct.md",
    "lens-quality-gemma-3-270m.csv",
    "lens-quality-smollm2-135m-instruct.csv",
    "output-gemma-3-270m-records.csv",
    "output-gemma-3-270m.json",
    "output-smollm2-135m-instruct-records.csv",
    "output-smollm2-135m-instruct.json",
]

PROVENANCE = [
    "evaluation-cross-model.prov.json",
    "evaluation-gemma-3-270m.prov.json",
    "evaluation-meta.prov.json",
    "evaluation-smollm2-135m-instruct.prov.json",
    "heatmaps-gemma-3-270m.prov.json",
    "heatmaps-smollm2-135m-instruct.prov.json",
    "lens-quality-gemma-3-270m.prov.json",
    "lens-quality-smollm2-135m-instruct.prov.json",
    "output-gemma-3-270m.prov.json",
    "output-smollm2-135m-instruct.prov.json",
    "plot-cross-model.prov.json",
    "statistics-gemma-3-270m.prov.json",
    "statistics-smollm2-135m-instruct.prov.json",
]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    import yaml

    workdir = scratch_copy(tmp_path_factory.mktemp("e2e"))
    assert files_under(workdir / "results") == []
    targets = ["results/001/evaluation-cross-model.md", "results/001/evaluation-meta.md"]
    targets += [f"results/001/lens-quality-{model}.csv" for model in ("smollm2-135m-instruct", "gemma-3-270m")]
    targets += ["results/002/evaluation-cross-model.md", "results/002/evaluation-meta.md"]
    result = snakemake(workdir, "--cores", "2", *targets, timeout=3000)
    assert result.returncode == 0, said(result)[-5000:]
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return workdir, config


def test_all_five_kinds_of_file(default_run):
    workdir, _ = default_run
    results = workdir / "results" / "001"
    assert sorted(p.name for p in results.iterdir() if p.is_file()) == KINDS
    assert files_under(results / "provenance") == PROVENANCE


def test_provenance_check_passes_on_the_fresh_run(default_run):
    import subprocess
    import sys

    workdir, _ = default_run
    check = subprocess.run([sys.executable, "-m", "workflow.check"], cwd=workdir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    # Every artefact a record names (records, JSON, figures, evaluations of 001 and 002) is ok.
    recorded = sum(len(json.loads(f.read_text())["artefacts"]) for f in (workdir / "results").rglob("*.prov.json"))
    assert recorded > 40
    assert check.stdout.strip().endswith(f"{recorded} ok, 0 not ok")


@contextlib.contextmanager
def native_blocks():
    """gguf-py's ``dequantize`` served by the native kernel where it handles the type."""
    import gguf

    from workflow.native import dequantise

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
def test_final_top1_matches_plain_transformers(default_run, plain_transformers, model):
    workdir, _ = default_run
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
def test_tuned_lens_beats_the_logit_lens_on_held_out_text(default_run, model):
    """The tuned lens paper's result: lower KL to the final distribution at every layer but the last."""
    import csv

    workdir, _ = default_run
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
def test_patching_equals_plain_transformers_hooks(default_run, plain_transformers, model):
    """Experiment 002's recovered fractions against a plain transformers model loaded from the
    same GGUF file, patched with forward hooks on its own decoder layers, one full forward
    pass and the model's own logits per (layer, position): every position at five depths,
    both directions, for the first pair; and the exact 1 of the last cell."""
    from test_patching import reference_logit_diff, reference_residuals
    from workflow.exp002.records import read_patching_records

    workdir, _ = default_run
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


def test_the_example_notebook_runs_on_the_embedded_models(default_run):
    """examples/capital-of-germany.ipynb top to bottom in a kernel (nbclient), in the run's
    folder (its prepared models and trained tuned lenses): no cell fails, the three figures
    are shown, and the layers it prints are those the pipeline recorded for the same prompt."""
    import re

    import nbformat
    from nbclient import NotebookClient

    workdir, _ = default_run
    book = nbformat.read(REPO / "examples" / "capital-of-germany.ipynb", as_version=4)
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    found = {(m[1], m[2]): (m[3], m[4]) for m in re.finditer(r"^(\S+)\s+(logit|tuned)\s+lens: first top-1 at layer (\w+) of \d+, stays from layer (\w+)$", printed, re.M)}
    assert len(found) == 4, printed
    for model in ("smollm2-135m-instruct", "gemma-3-270m"):
        summary = json.loads((workdir / "results" / "001" / f"output-{model}.json").read_text())
        probe = next(p for p in summary["probes"] if p["id"] == "capital-germany")
        assert found[(model, "logit")] == (str(probe["first_top1_layer"]), str(probe["stable_top1_layer"]))
        assert found[(model, "tuned")] == (str(probe["tuned"]["first_top1_layer"]), str(probe["tuned"]["stable_top1_layer"]))
    assert not (workdir / "resources" / "chat-lenses").exists()  # the pipeline's tuned lenses were read

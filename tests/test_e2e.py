"""The real default pipeline on the two embedded models, from an empty results/.

Slow (a few minutes: both models are dequantised from their GGUF files first).
The final top-1 of every probe is checked against a plain transformers forward
pass of the same GGUF file, loaded independently of the pipeline.
"""

import json

import pytest
import torch

from pipeline import REPO, files_under, said, scratch_copy, snakemake
from workflow.prepare import locate_gguf

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
    "lens-quality-gemma-3-270m.prov.json",
    "lens-quality-smollm2-135m-instruct.prov.json",
    "output-gemma-3-270m.prov.json",
    "output-smollm2-135m-instruct.prov.json",
]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    import yaml

    workdir = scratch_copy(tmp_path_factory.mktemp("e2e"))
    assert files_under(workdir / "results") == []
    targets = ["results/001/evaluation-cross-model.md", "results/001/evaluation-meta.md"]
    targets += [f"results/001/lens-quality-{model}.csv" for model in ("smollm2-135m-instruct", "gemma-3-270m")]
    result = snakemake(workdir, *targets, timeout=3000)
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
    assert check.stdout.strip().endswith("10 ok, 0 not ok")


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_final_top1_matches_plain_transformers(default_run, model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir, config = default_run
    summary = json.loads((workdir / "results" / "001" / f"output-{model}.json").read_text())
    gguf = locate_gguf(model, config["models"][model], tmp_path)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
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

"""The tuned lens on tiny random models: identity at zero, training helps on held-out text,
saving round-trips, a lens for other weights is refused; and the pipeline records both lenses."""

import csv
import json

import pytest
import torch

from conftest import PROBES
from tiny import random_translators
from pipeline import planned_jobs, said, snakemake
from workflow.base.errors import UserError
from workflow.config.settings import LensSettings
from workflow.lens.session import lens_heads
from workflow.lens.run import read_probes
from workflow.lens.records import read_records
from workflow.lens import tuned
from workflow.lens.tuned_training import train_for_model
from workflow.model.load import ModelSpec

SETTINGS = tuned.TunedLensSettings(steps=40, batch_positions=16, seq_len=32, train_sequences=24, heldout_positions=96, learning_rate=3e-3)


@pytest.fixture(scope="module")
def residuals(loaded):
    model = loaded["llama"]
    train_docs, heldout_docs = tuned.corpus_documents()
    train = tuned.collect_residuals(model, tuned.sequences(model.tokenizer, train_docs, SETTINGS.seq_len, SETTINGS.train_sequences))
    heldout = tuned.collect_residuals(model, tuned.sequences(model.tokenizer, heldout_docs, SETTINGS.seq_len, 4))
    return train, heldout[: SETTINGS.heldout_positions]


def test_corpus_split_is_disjoint_and_held_out_text_is_never_trained_on():
    train_docs, heldout_docs = tuned.corpus_documents()
    assert len(heldout_docs) > 100 and len(train_docs) > 9 * len(heldout_docs) - 10
    assert not set(train_docs) & set(heldout_docs)


def test_zero_initialised_lens_is_exactly_the_logit_lens(kernel, loaded):
    model = loaded["gemma3"]
    lens = tuned.TunedLens(model.n_layers, model.d_model)
    rows = read_probes(model, [dict(p) for p in PROBES], LensSettings(), lens).rows
    logit = [r for r in rows if r["lens"] == "logit"]
    tuned_rows = [r for r in rows if r["lens"] == "tuned"]
    assert len(logit) == len(tuned_rows) > 0
    for a, b in zip(logit, tuned_rows):
        assert {k: v for k, v in a.items() if k != "lens"} == {k: v for k, v in b.items() if k != "lens"}


def test_training_lowers_held_out_kl_at_every_layer_but_the_last(loaded, residuals):
    model = loaded["llama"]
    _, head = lens_heads(model, LensSettings())
    train, heldout = residuals
    lens, history = tuned.train(head, train, SETTINGS)
    assert history[-1]["mean_kl"] < history[0]["mean_kl"]
    before = tuned.lens_quality(head, heldout, None)
    after = tuned.lens_quality(head, heldout, lens)
    for b, a in zip(before[:-1], after[:-1]):
        assert a["kl_to_final"] < b["kl_to_final"], (a, b)
    assert after[-1]["kl_to_final"] == pytest.approx(0.0, abs=1e-5) and after[-1]["top1_agreement"] == 1.0


def test_least_squares_fit_against_numpy():
    """The closed-form start against NumPy's least squares on the same weighted problem
    (ridge as extra rows), and an exact affine relation recovered exactly."""
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    n, d = 300, 12
    residuals = torch.randn(n, 3, d, generator=gen) * torch.linspace(0.5, 4.0, n)[:, None, None]
    ridge = 0.05
    fitted = tuned.least_squares(residuals, ridge)
    x, y = residuals[:, 0].double().numpy(), residuals[:, 2].double().numpy()
    weight = 1 / np.sqrt((y**2).mean(1, keepdims=True))
    design = np.hstack([x, np.ones((n, 1))]) * weight
    penalty = np.sqrt(ridge * np.diag(design.T @ design).mean()) * np.eye(d + 1)
    solution = np.linalg.lstsq(np.vstack([design, penalty]), np.vstack([(y - x) * weight, np.zeros((d + 1, d))]), rcond=None)[0]
    assert np.allclose(fitted.weight[0].detach().double().numpy(), solution[:-1].T, atol=1e-5)
    assert np.allclose(fitted.bias[0].detach().double().numpy(), solution[-1], atol=1e-5)
    # h_2 = h_1 + A h_1 + b exactly: found without ridge, and the translated layer is h_2.
    a, b = torch.randn(d, d, generator=gen) * 0.3, torch.randn(d, generator=gen)
    residuals[:, 2] = residuals[:, 1] + residuals[:, 1] @ a.T + b
    exact = tuned.least_squares(residuals, 0.0)
    assert torch.allclose(exact.weight[1], a, atol=1e-4) and torch.allclose(exact.bias[1], b, atol=1e-4)
    assert torch.allclose(exact(residuals[:, 1], 1), residuals[:, 2], atol=1e-4)


def test_no_kl_steps_is_the_least_squares_fit(loaded, residuals):
    _, head = lens_heads(loaded["llama"], LensSettings())
    lens, history = tuned.train(head, residuals[0], tuned.TunedLensSettings(steps=0))
    start = tuned.least_squares(residuals[0])
    assert history == [] and torch.equal(lens.weight, start.weight) and torch.equal(lens.bias, start.bias)


def test_training_is_reproducible(loaded, residuals):
    _, head = lens_heads(loaded["llama"], LensSettings())
    short = tuned.TunedLensSettings(steps=3, batch_positions=8)
    first, _ = tuned.train(head, residuals[0], short)
    second, _ = tuned.train(head, residuals[0], short)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)


def test_saving_and_loading_round_trips(loaded, tmp_path):
    model = loaded["llama"]
    _, head = lens_heads(model, LensSettings())
    lens = tuned.TunedLens(model.n_layers, model.d_model)
    with torch.no_grad():
        lens.weight.normal_(0, 0.01)
        lens.bias.normal_(0, 0.01)
    config = tuned.training_config("tiny-llama", head, SETTINGS, 10, {"positions": 0, "logit": [], "tuned": []})
    tuned.save(lens, tmp_path / "lens", config, [{"step": 1, "mean_kl": 1.0}])
    loaded_lens, loaded_config = tuned.load(tmp_path / "lens", head, "tiny-llama")
    assert torch.equal(loaded_lens.weight, lens.weight) and torch.equal(loaded_lens.bias, lens.bias)
    assert loaded_config == json.loads(json.dumps(config))
    assert (tmp_path / "lens" / "training-log.csv").read_text().startswith("step,mean_kl\n")


def test_a_lens_trained_for_other_weights_is_refused(loaded, tmp_path):
    llama, gemma = loaded["llama"], loaded["gemma3"]
    _, llama_head = lens_heads(llama, LensSettings())
    _, gemma_head = lens_heads(gemma, LensSettings())
    lens = tuned.TunedLens(llama.n_layers, llama.d_model)
    tuned.save(lens, tmp_path / "lens", tuned.training_config("tiny-llama", llama_head, SETTINGS, 1, {}), [])
    with pytest.raises(UserError, match=r"trained for 'tiny-llama' with unembedding sha256 .* but model 'tiny-gemma3' has"):
        tuned.load(tmp_path / "lens", gemma_head, "tiny-gemma3")
    with pytest.raises(UserError, match="no trained tuned lens here"):
        tuned.load(tmp_path / "nothing", llama_head, "tiny-llama")


def test_pipeline_records_both_lenses_and_their_quality(tuned_run):
    results = tuned_run / "results" / "001"
    for model in ("tiny-llama", "tiny-gemma3"):
        records = read_records(results / f"output-{model}-records.csv")
        assert set(records["lens"]) == {"logit", "tuned"}
        assert (records["lens"] == "tuned").sum() == (records["lens"] == "logit").sum()
        summary = json.loads((results / f"output-{model}.json").read_text())
        assert summary["lenses"] == ["logit", "tuned"] and len(summary["tuned_lens"]["unembedding_sha256"]) == 64
        with open(results / f"lens-quality-{model}.csv", newline="") as fh:
            quality = list(csv.DictReader(fh))
        assert {(r["lens"], int(r["layer"])) for r in quality} == {(lens, layer) for lens in ("logit", "tuned") for layer in range(4)}
        assert (results / "plots" / model / "lens-quality.png").is_file()
        lens_dir = tuned_run / "resources" / "lenses" / model
        assert {p.name for p in lens_dir.iterdir() if not p.name.startswith(".")} == {"translators.safetensors", "config.json", "training-log.csv"}
    text = (results / "evaluation-tiny-llama.md").read_text()
    assert "tuned lens" in text


def test_retraining_invalidates_the_lens_run(tuned_run, tmp_path):
    import shutil

    import yaml

    copy = tmp_path / "wd"
    shutil.copytree(tuned_run, copy, symlinks=True)
    path = copy / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["tuned_lens"]["steps"] = 16
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(copy, "-n")
    planned = set(planned_jobs(said(result)))
    for model in ("tiny-llama", "tiny-gemma3"):
        assert {("train_tuned_lens", model), ("run_lens", model), ("lens_quality", model)} <= planned


def test_tuned_rows_decode_the_translated_residual(kernel, loaded):
    """Against an independent computation: softmax(lm_head(norm(h + A h + b))) at every layer."""
    model = loaded["llama"]
    lens = random_translators(model)
    probe = dict(PROBES[0])
    read = read_probes(model, [probe], LensSettings(), lens)
    rows = read.rows
    ids = read.probes[0]["input_ids"]
    answer = read.probes[0]["answer_token_id"]
    hf = model.backend.hf_model
    with torch.no_grad():
        states = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in range(model.n_layers + 1):
            h = states[layer][0, -1]
            if layer < model.n_layers:
                h = h + lens.weight[layer] @ h + lens.bias[layer]
                h = hf.model.norm(h)
            probs = torch.softmax(hf.lm_head(h), -1)  # the last hidden state is already normed
            row = next(r for r in rows if r["lens"] == "tuned" and r["layer"] == layer and r["position"] == len(ids) - 1)
            assert row["answer_prob"] == pytest.approx(float(probs[answer]), abs=1e-5)
            assert row["top1_prob"] == pytest.approx(float(probs.max()), abs=1e-5)
    logit_rows = [r for r in rows if r["lens"] == "logit"]
    tuned_rows = [r for r in rows if r["lens"] == "tuned"]
    assert any(a["top1_prob"] != b["top1_prob"] for a, b in zip(logit_rows, tuned_rows) if a["layer"] < model.n_layers)


def test_llm_digest_carries_the_tuned_lens(tuned_run):
    """An LLM evaluator sees where the tuned lens puts the answer, not only the offline analyst."""
    from workflow.experiments.exp001.analysis import model_facts
    from workflow.experiments.exp001.digest import model_digest

    results = tuned_run / "results" / "001"
    facts = model_facts(results / "output-tiny-llama.json", results / "output-tiny-llama-records.csv")
    assert facts.lenses == ["logit", "tuned"]
    digest = model_digest(facts)
    assert digest.count("tuned lens: answer first top-1 at layer") == len(PROBES)


def test_the_fit_gives_the_same_bits_on_one_and_two_threads():
    """At a real model's width LAPACK's threaded factorisation changed the fit's last bits
    between 1 and 2 threads (and so the tuned lens's records); the solve runs on one."""
    gen = torch.Generator().manual_seed(0)
    residuals = torch.randn(1400, 3, 640, generator=gen) * torch.logspace(-2, 2, 640)  # scales as unequal as a real model's
    threads = torch.get_num_threads()
    fits = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            fits.append(tuned.least_squares(residuals))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fits[0].weight, fits[1].weight) and torch.equal(fits[0].bias, fits[1].bias)
    assert torch.get_num_threads() == threads


def test_a_training_sequence_longer_than_the_model_or_the_text_is_refused_naming_the_key(loaded, tiny_dirs, tmp_path):
    """tuned_lens.seq_len 1e9 ended in "torch.cat(): expected a non-empty list"."""
    model = loaded["llama"]
    train_docs, _ = tuned.corpus_documents()
    with pytest.raises(UserError, match=r"config key tuned_lens.seq_len: the training text holds [0-9,]+ tokens .* fewer than one sequence of 1,000,000,000"):
        tuned.sequences(model.tokenizer, train_docs[:3], 10**9, 4)
    huge = tuned.TunedLensSettings(seq_len=10**9)
    with pytest.raises(UserError, match=r"config key tuned_lens.seq_len: 1,000,000,000 tokens .* more than model 'tiny-llama' takes"):
        train_for_model(ModelSpec("tiny-llama", {"source": "local", "path": str(tiny_dirs["llama"])}, None, "cpu", "float32"),
                        tmp_path / "lens", settings=huge)
    assert not (tmp_path / "lens").exists()

"""Experiment 002, activation patching, on tiny random models.

``recovered`` is checked against an independent computation: plain PyTorch forward hooks
on the transformers model's own decoder layers (found by attribute, not through the
pipeline's backends), a full forward pass per patched (layer, position), and the
model's own logits. And against TransformerLens 4's patching utilities.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from workflow.base.errors import UserError
from workflow.experiments.exp002.patching import PatchingSettings, noised_embeddings
from workflow.lens.pairs import tokenise_pair
from workflow.experiments.exp002.records import RECORD_COLUMNS
from workflow.experiments.exp002.run import run_patching, write_patching_outputs
from workflow.lens.job import Outputs
from workflow.model.load import ModelSpec
from workflow.config.settings import LensSettings

PAIR = {
    "id": "germany-france",
    "clean": "The capital of Germany is",
    "clean_answer": " Berlin",
    "corrupted": "The capital of France is",
    "corrupted_answer": " Paris",
}
REVERSE = {
    "id": "berlin-paris",
    "clean": "Berlin is the capital of",
    "clean_answer": " Germany",
    "corrupted": "Paris is the capital of",
    "corrupted_answer": " France",
}
SETTINGS = PatchingSettings(batch_size=16, trace_samples=2)


def _hf(loaded_model):
    return loaded_model.backend.hf_model


def _decoder_layers(hf):
    return hf.model.layers  # Llama and Gemma 3 keep their decoder layers here


def reference_logit_diff(hf, ids, answer, other, writes=()):
    """logit(answer) - logit(other) at the last position of a full forward pass of ``ids``,
    the residual at each (layer, position) in ``writes`` replaced by the given vector."""
    layers = _decoder_layers(hf)
    handles = []
    for layer, position, value in writes:
        if layer == 0:
            def pre(module, args, kwargs, position=position, value=value):
                hidden = (args[0] if args else kwargs["hidden_states"]).clone()
                hidden[0, position] = value
                return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

            handles.append(layers[0].register_forward_pre_hook(pre, with_kwargs=True))
        else:
            def post(module, args, output, position=position, value=value):
                hidden = (output[0] if isinstance(output, tuple) else output).clone()
                hidden[0, position] = value
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            handles.append(layers[layer - 1].register_forward_hook(post))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].double()
    finally:
        for handle in handles:
            handle.remove()
    return float(logits[answer] - logits[other])


def reference_residuals(hf, ids):
    """[L+1, T, d]: entering the first decoder layer, then each layer's output."""
    layers = _decoder_layers(hf)
    seen = []
    handles = [layers[0].register_forward_pre_hook(lambda m, a, k: seen.append((a[0] if a else k["hidden_states"])[0].clone()), with_kwargs=True)]
    handles += [layer.register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o)[0].clone())) for layer in layers]
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(seen)


def _records(rows, corruption, direction):
    return {(r["layer"], r["position"]): r for r in rows if r["corruption"] == corruption and r["direction"] == direction}


@pytest.fixture(scope="module")
def hooks_models(tiny_dirs):
    from workflow.model.load import load_model

    return {
        arch: load_model(f"tiny-{arch}", {"source": "local", "path": str(path)}, None, device="cpu", dtype="float32", backend="hooks")
        for arch, path in tiny_dirs.items()
    }


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("backend", ["bridge", "hooks"])
def test_recovered_equals_an_independent_hook_computation(loaded, hooks_models, arch, backend):
    model = loaded[arch] if backend == "bridge" else hooks_models[arch]
    assert model.backend.name == {"bridge": "transformer_bridge", "hooks": "forward_hooks"}[backend]
    summary, rows = run_patching(model, [PAIR], SETTINGS, LensSettings())
    pair = summary["pairs"][0]
    hf = _hf(model)
    clean_ids, corrupted_ids = pair["clean_input_ids"], pair["corrupted_input_ids"]
    a, b = pair["clean_answer_token_id"], pair["corrupted_answer_token_id"]
    clean, corrupted = reference_residuals(hf, clean_ids), reference_residuals(hf, corrupted_ids)
    ld_clean, ld_corrupted = reference_logit_diff(hf, clean_ids, a, b), reference_logit_diff(hf, corrupted_ids, a, b)
    assert pair["logit_diff_clean"] == pytest.approx(ld_clean, abs=1e-4)
    assert pair["logit_diff_corrupted"] == pytest.approx(ld_corrupted, abs=1e-4)
    denoise, noise = _records(rows, "prompt", "denoise"), _records(rows, "prompt", "noise")
    n_layers, n_tokens = clean.shape[0] - 1, clean.shape[1]
    assert set(denoise) == set(noise) == {(layer, p) for layer in range(n_layers + 1) for p in range(n_tokens)}
    for (layer, position), row in denoise.items():
        ld = reference_logit_diff(hf, corrupted_ids, a, b, [(layer, position, clean[layer, position])])
        assert row["recovered"] == pytest.approx((ld - ld_corrupted) / (ld_clean - ld_corrupted), abs=1e-3), (layer, position)
        assert row["logit_diff"] == pytest.approx(ld, abs=1e-4)
    for (layer, position), row in noise.items():
        ld = reference_logit_diff(hf, clean_ids, a, b, [(layer, position, corrupted[layer, position])])
        assert row["recovered"] == pytest.approx((ld - ld_clean) / (ld_corrupted - ld_clean), abs=1e-3), (layer, position)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_causal_tracing_equals_an_independent_hook_computation(loaded, arch):
    model = loaded[arch]
    summary, rows = run_patching(model, [PAIR], SETTINGS, LensSettings())
    pair = summary["pairs"][0]
    hf = _hf(model)
    ids, a, b = pair["clean_input_ids"], pair["clean_answer_token_id"], pair["corrupted_answer_token_id"]
    clean = reference_residuals(hf, ids)
    # The noise is an input of the method: the same seeded samples the run drew.
    tokenised = tokenise_pair(model.tokenizer, PAIR)
    assert tokenised.subject_positions == pair["subject_positions"]
    samples = noised_embeddings(tokenised, clean, summary["trace_noise_std"], SETTINGS)
    subject = pair["subject_positions"]

    def traced(restore=()):
        values = [
            reference_logit_diff(hf, ids, a, b, [(0, p, sample[p]) for p in subject if (0, p) not in {(r[0], r[1]) for r in restore}] + list(restore))
            for sample in samples
        ]
        return sum(values) / len(values)

    ld_clean, ld_noised = reference_logit_diff(hf, ids, a, b), traced()
    assert pair["logit_diff_noised"] == pytest.approx(ld_noised, abs=1e-4)
    restored = _records(rows, "gaussian", "denoise")
    for (layer, position) in [(0, subject[0]), (1, subject[0]), (1, len(ids) - 1), (model.n_layers - 1, len(ids) - 1), (2, 0)]:
        ld = traced([(layer, position, clean[layer, position])])
        expected = (ld - ld_noised) / (ld_clean - ld_noised)
        assert restored[(layer, position)]["recovered"] == pytest.approx(expected, abs=1e-3), (layer, position)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_denoising_the_last_position_after_the_last_block_recovers_exactly_one(loaded, arch):
    model = loaded[arch]
    summary, rows = run_patching(model, [PAIR, REVERSE], SETTINGS, LensSettings())
    for pair in summary["pairs"]:
        last = (model.n_layers, len(pair["clean_input_ids"]) - 1)
        cells = [r for r in rows if r["pair"] == pair["id"] and (r["layer"], r["position"]) == last]
        assert {(r["corruption"], r["direction"]) for r in cells} == {("prompt", "denoise"), ("prompt", "noise"), ("gaussian", "denoise")}
        by_kind = {(r["corruption"], r["direction"]): r["recovered"] for r in cells}
        assert by_kind[("prompt", "denoise")] == 1.0  # exactly: the clean run's own residual
        assert by_kind[("prompt", "noise")] == 1.0
        assert by_kind[("gaussian", "denoise")] == pytest.approx(1.0, abs=1e-12)  # a mean of equal values


def test_transformer_lens_patching_utilities_agree(loaded):
    """TransformerLens 4's get_act_patch_resid_pre on the bridge: the same sweep, one run per cell."""
    from transformer_lens import patching

    model = loaded["llama"]
    bridge = model.backend.bridge
    summary, rows = run_patching(model, [PAIR], SETTINGS, LensSettings())
    pair = summary["pairs"][0]
    a, b = pair["clean_answer_token_id"], pair["corrupted_answer_token_id"]
    clean, corrupted = torch.tensor([pair["clean_input_ids"]]), torch.tensor([pair["corrupted_input_ids"]])
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean)
        theirs = patching.get_act_patch_resid_pre(bridge, corrupted, cache, lambda logits: logits[0, -1, a] - logits[0, -1, b])
    ours = _records(rows, "prompt", "denoise")
    assert theirs.shape == (model.n_layers, len(pair["clean_input_ids"]))
    for layer in range(model.n_layers):  # resid_pre of block k is our layer k
        for position in range(theirs.shape[1]):
            assert ours[(layer, position)]["logit_diff"] == pytest.approx(float(theirs[layer, position]), abs=1e-4)


def test_batch_size_and_backend_do_not_change_the_records(loaded, hooks_models):
    runs = [
        run_patching(loaded["gemma3"], [PAIR], PatchingSettings(batch_size=size, trace_samples=2), LensSettings())[1]
        for size in (1, 7, 500)
    ]
    runs.append(run_patching(hooks_models["gemma3"], [PAIR], PatchingSettings(batch_size=7, trace_samples=2), LensSettings())[1])
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        for x, y in zip(runs[0], other):
            assert (x["corruption"], x["direction"], x["layer"], x["position"]) == (y["corruption"], y["direction"], y["layer"], y["position"])
            assert x["logit_diff"] == pytest.approx(y["logit_diff"], abs=1e-5)


def test_prompts_of_different_lengths_are_refused_naming_the_pair(loaded):
    tokenizer = loaded["llama"].tokenizer
    bad = {**PAIR, "id": "uneven", "corrupted": "The capital of the Federal Republic of Germany is"}
    with pytest.raises(UserError, match=r"pair 'uneven' on model 'tiny-llama': the clean prompt .* tokenises to \d+ tokens .* same length"):
        tokenise_pair(tokenizer, bad, "tiny-llama")
    with pytest.raises(UserError, match="pair 'same': both answers begin with the same token"):
        tokenise_pair(tokenizer, {**PAIR, "id": "same", "corrupted_answer": " Berlin"})
    with pytest.raises(UserError, match="pair 'twin': the clean and corrupted prompts tokenise the same"):
        tokenise_pair(tokenizer, {**PAIR, "id": "twin", "corrupted": PAIR["clean"]})


def test_outputs_follow_the_data_contract(tiny_dirs, tmp_path):
    from workflow.experiments.exp002.analysis import model_facts

    summary_path, records_path = tmp_path / "output-tiny-llama.json", tmp_path / "output-tiny-llama-records.csv"
    write_patching_outputs(
        ModelSpec("tiny-llama", {"source": "local", "path": str(tiny_dirs["llama"])}, None, "cpu", "float32"), LensSettings(),
        {"batch_size": 16, "trace": {"samples": 2}, "pairs": [PAIR, REVERSE]}, Outputs(str(summary_path), str(records_path)),
    )
    summary = json.loads(summary_path.read_text())
    for key in ("model", "architecture", "n_layers", "d_model", "vocab_size", "backend", "device", "dtype", "packages"):
        assert key in summary
    for pair in summary["pairs"]:
        for key in ("id", "clean_prompt", "corrupted_prompt", "clean_input_ids", "corrupted_input_ids", "clean_answer_token_id",
                    "corrupted_answer_token_id", "logit_diff_clean", "logit_diff_corrupted", "warnings"):
            assert key in pair, key
    header = records_path.read_text().splitlines()[0]
    assert header == ",".join(f'"{c}"' for c in RECORD_COLUMNS)
    assert RECORD_COLUMNS[:8] == ("model", "pair", "direction", "layer", "position", "token", "logit_diff", "recovered")
    facts = model_facts(summary_path, records_path)
    assert [p.id for p in facts.pairs] == ["germany-france", "berlin-paris"]
    sweep = facts.pairs[0].sweeps["prompt/denoise"]
    assert sweep.last_curve[-1] == 1.0
    assert not any(math.isnan(v) for row in sweep.grid for v in row)


# ---------------------------------------------------------------- the pipeline


def test_the_chain_builds_from_nothing_with_lens_figures_beside(patched_run):
    from pipeline import files_under

    results = patched_run / "results" / "002"
    names = files_under(results)
    for model in ("tiny-llama", "tiny-gemma3"):
        for name in (f"output-{model}.json", f"output-{model}-records.csv", f"evaluation-{model}.md",
                     f"plots/{model}/patching-germany-france.png", f"plots/{model}/patching-berlin-paris.png",
                     f"provenance/output-{model}.prov.json", f"provenance/evaluation-{model}.prov.json"):
            assert name in names, name
    assert "evaluation-cross-model.md" in names and "plots/cross-model-patching.png" in names
    # 002's evaluations read 001's outputs of the same model: the lens was run for them.
    assert (patched_run / "results" / "001" / "output-tiny-llama.json").is_file()
    single = (results / "evaluation-tiny-llama.md").read_text()
    assert single.startswith("# tiny-llama: activation patching (experiment 002)")
    for heading in ("## Where patching restores the answer", "## Subject and last position", "## Causal tracing", "## Lens and patching"):
        assert heading in single
    assert "001 logit lens: answer first top-1" in single  # the cross-experiment comparison
    assert "plots/tiny-llama/patching-germany-france.png" in single
    cross = (results / "evaluation-cross-model.md").read_text()
    assert "## By relative depth" in cross and "plots/cross-model-patching.png" in cross
    assert (patched_run / "logs" / "002" / "run_patching-tiny-llama.log").is_file()


def test_offline_figures_are_the_records(patched_run):
    """The depth the analyst writes for a pair is the first layer whose last-position record reaches 0.5."""
    from workflow.experiments.exp002.records import read_patching_records

    results = patched_run / "results" / "002"
    summary = json.loads((results / "output-tiny-gemma3.json").read_text())
    frame = read_patching_records(str(results / "output-tiny-gemma3-records.csv"), summary)
    pair = summary["pairs"][0]
    last = len(pair["clean_input_ids"]) - 1
    rows = frame[(frame.pair == pair["id"]) & (frame.corruption == "prompt") & (frame.direction == "denoise") & (frame.position == last)]
    first = int(rows[rows.recovered >= 0.5].layer.min())
    line = next(l for l in (results / "evaluation-tiny-gemma3.md").read_text().splitlines() if l.startswith(f"| {pair['id']} |"))
    assert f"| {first} ({first / summary['n_layers']:.2f}) |" in line


def test_provenance_check_covers_both_experiments(patched_run):
    import subprocess
    import sys

    check = subprocess.run([sys.executable, "-m", "workflow.provenance.check"], cwd=patched_run, capture_output=True, text=True)
    assert "ok         results/002/evaluation-cross-model.md" in check.stdout
    assert "ok         results/001/output-tiny-llama.json" in check.stdout
    # The run made 002's cross-model evaluation alone: check reads the default plan, in which the rest
    # of 001 and 003 is missing; nothing that was made is stale or modified.
    statuses = {line.split()[0] for line in check.stdout.splitlines()
                if line.split() and line.split()[0] in ("ok", "stale", "modified", "missing", "unplanned", "unrecorded")}
    assert statuses == {"ok", "missing"}, check.stdout
    assert check.returncode != 0


def _copy_with_first_pair(patched_run, tmp_path, **changes):
    """A copy of the finished run whose first pair has ``changes``."""
    import shutil

    import yaml

    workdir = tmp_path / "wd"
    shutil.copytree(patched_run, workdir, symlinks=True)
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["patching"]["pairs"][0].update(changes)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def test_a_pair_of_unequal_lengths_fails_the_job_naming_it(patched_run, tmp_path):
    from pipeline import said, snakemake

    workdir = _copy_with_first_pair(patched_run, tmp_path, corrupted="The capital of the Federal Republic of Germany is")
    before = (workdir / "results" / "002" / "output-tiny-llama.json").read_bytes()
    result = snakemake(workdir, "results/002/output-tiny-llama.json")
    assert result.returncode != 0
    log = (workdir / "logs" / "002" / "run_patching-tiny-llama.log").read_text()
    assert "pair 'germany-france' on model 'tiny-llama': the clean prompt" in log and "same length" in log
    assert (workdir / "results" / "002" / "output-tiny-llama.json").read_bytes() == before, said(result)[-2000:]


def test_unknown_probe_is_refused_before_anything_runs(patched_run, tmp_path):
    from pipeline import said, snakemake

    workdir = _copy_with_first_pair(patched_run, tmp_path, probe="no-such-probe")
    result = snakemake(workdir, "-n")
    assert result.returncode != 0
    assert "pair 'germany-france' names probe 'no-such-probe', which is not one of the probes" in said(result)


def test_pairs_made_from_a_probe_set(loaded):
    """patching.from_probes: each probe of a relation against another of its relation and
    direction, the partner chosen per tokenizer (as many tokens, another answer); patched
    exactly like a pair written by hand."""
    from workflow.lens.pairs import derive_pairs

    # The tiny tokenizer: Germany and France 1 token, Japan 3; Berlin and Paris 2, Tokyo 1.
    probes = []
    for country, city in (("Germany", "Berlin"), ("Japan", "Tokyo"), ("France", "Paris")):
        probes.append({"id": f"cap.{country}", "prompt": f"The capital of {country} is", "answer": f" {city}",
                       "relation": "cap", "direction": "forward"})
        probes.append({"id": f"cap.{country}.reverse", "prompt": f"{city} is the capital of", "answer": f" {country}",
                       "relation": "cap", "direction": "reverse", "reverse_of": f"cap.{country}"})
    probes.append({"id": "loose", "prompt": "No relation here", "answer": " x"})
    assert [p["id"] for p in derive_pairs(probes, 3)] == ["cap.Germany", "cap.Germany.reverse", "cap.Japan"]
    pairs = derive_pairs(probes, 2)
    forward, reverse = pairs
    assert [c[0] for c in forward["corrupted_candidates"]] == ["The capital of Japan is", "The capital of France is"]
    assert [c[0] for c in reverse["corrupted_candidates"]] == ["Tokyo is the capital of", "Paris is the capital of"]
    model = loaded["llama"]
    summary, rows = run_patching(model, pairs, PatchingSettings(trace_samples=0), LensSettings())
    for pair in summary["pairs"]:
        assert pair["from_probes"] and pair["probe"] == pair["id"]
        assert len(pair["clean_input_ids"]) == len(pair["corrupted_input_ids"])
        assert pair["clean_answer_token_id"] != pair["corrupted_answer_token_id"]
    by_hand = [{k: p[k] for k in ("id", "clean", "clean_answer", "corrupted", "corrupted_answer")}
               for p in (dict(s, clean=s["clean_prompt"], corrupted=s["corrupted_prompt"]) for s in summary["pairs"])]
    assert run_patching(model, by_hand, PatchingSettings(trace_samples=0), LensSettings())[1] == rows
    # The first candidate with as many tokens: France, not Japan; Paris, not Tokyo.
    assert [p["corrupted_prompt"] for p in summary["pairs"]] == ["The capital of France is", "Paris is the capital of"]
    # A probe with no partner of its length on this model is left out, saying why.
    lonely = dict(pairs[0], id="lonely", corrupted_candidates=[["Paris", " France"]])
    summary, rows = run_patching(model, [lonely, pairs[1]], PatchingSettings(trace_samples=0), LensSettings())
    assert [p["id"] for p in summary["pairs"]] == [pairs[1]["id"]] and {r["pair"] for r in rows} == {pairs[1]["id"]}
    assert summary["skipped_pairs"][0]["id"] == "lonely"
    assert "none of the 1 other probes of its relation has a prompt of" in summary["skipped_pairs"][0]["reason"]
    with pytest.raises(UserError, match="no pair can be patched"):
        run_patching(model, [lonely], PatchingSettings(trace_samples=0), LensSettings())

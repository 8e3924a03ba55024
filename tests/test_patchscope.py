"""The patchscope lens (workflow/lens/patchscope.py) against a forward pass written from the
method's description: transformers' own model run on the inspection prompt, a forward hook
replacing the placeholder's residual at the source layer with the source prompt's, and the
next-token logits at the inspection prompt's last position."""

from __future__ import annotations

import pytest
import torch

from pipeline import prepared_model
from workflow.lens.patchscope import IDENTITY_PROMPT, INSPECTION_PROMPT, PatchscopeTranslator
from workflow.model.backends import find_decoder_layers
from workflow.model.load import load_model

SOURCE = "The capital of Germany is"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    folder = prepared_model("smollm2-135m-instruct", tmp_path_factory)
    return load_model("smollm2", {"source": "local", "path": str(folder)}, None, device="cpu", dtype="float32",
                      backend="hooks")


def hooked_patchscope(model, inspection: list[int], hidden: torch.Tensor, layer: int, position: int) -> torch.Tensor:
    """The method as described: the inspection prompt through the model, the residual at
    ``layer`` (0: the embeddings' output; k: block k's) replaced at ``position``, the logits
    at its last position."""
    hf = model.backend.hf_model
    layers = find_decoder_layers(hf, model.n_layers)

    def replace(module, args, output):
        states = output[0] if isinstance(output, tuple) else output
        states[:, position] = hidden
        return output

    where = hf.get_input_embeddings() if layer == 0 else layers[layer - 1]
    handle = where.register_forward_hook(replace)
    try:
        with torch.no_grad():
            return hf(torch.tensor([inspection])).logits[0, -1]
    finally:
        handle.remove()


@pytest.mark.parametrize("layer", [0, 1, 12, 29, 30])
def test_the_patchscope_lens_is_the_hooked_forward_of_its_description(smollm2, layer):
    model = smollm2
    inspection = model.tokenizer(IDENTITY_PROMPT, add_special_tokens=True)["input_ids"]
    source = model.tokenizer(SOURCE, add_special_tokens=True)["input_ids"]
    residuals, _ = model.backend.capture(source, "all")
    hidden = residuals[layer, -1]
    assert model.tokenizer.decode(inspection[-2:]) == "? ->"
    assert model.tokenizer(INSPECTION_PROMPT, add_special_tokens=True)["input_ids"] == inspection[:-1]  # the default: "?" last
    for position in (-2, -1):  # the placeholder before the arrow; the last token (no block after the last layer)
        translator = PatchscopeTranslator(model.backend, inspection, position=position)
        with torch.no_grad():
            ours = model.backend.unembed(model.backend.final_norm(translator(hidden[None], layer)))[0]
        want = hooked_patchscope(model, inspection, hidden, layer, position)
        assert torch.allclose(ours, want, atol=1e-4 * want.abs().max().item()), float((ours - want).abs().max())
        assert translator.final_is_identity == (position == -1)
        if layer == model.n_layers and position == -1:  # nothing runs after the last layer: the logit lens
            lens = model.backend.unembed(model.backend.final_norm(hidden[None]))[0]
            torch.testing.assert_close(ours, lens)


def test_the_patchscope_reads_the_subject_where_the_logit_lens_reads_noise(smollm2):
    """The method's claim, on SmolLM2: the state of " Germany" in the source prompt, read by
    the model repeating it, gives back " Germany" from the first block on, while the logit
    lens reads it at no layer."""
    model = smollm2
    inspection = model.tokenizer(IDENTITY_PROMPT, add_special_tokens=True)["input_ids"]
    source = model.tokenizer(SOURCE, add_special_tokens=True)["input_ids"]
    germany = model.tokenizer(" Germany", add_special_tokens=False)["input_ids"]
    position = next(i for i, t in enumerate(source) if t == germany[0])
    residuals, _ = model.backend.capture(source, "all")
    translator = PatchscopeTranslator(model.backend, inspection, position=-2)
    with torch.no_grad():
        hidden = residuals[:, position]  # [L+1, d]
        read = torch.stack([model.backend.unembed(model.backend.final_norm(translator(hidden[l][None], l)))[0]
                            for l in range(model.n_layers + 1)])
        logit_lens = model.backend.unembed(model.backend.final_norm(hidden))
    patchscope_top = read.argmax(-1)
    lens_top = logit_lens.argmax(-1)
    found = [l for l in range(model.n_layers + 1) if patchscope_top[l] == germany[0]]
    # Seen: layers 1 to 17 of 30 through the patchscope, none through the logit lens.
    assert set(range(1, 11)) <= set(found), [model.tokenizer.decode([int(t)]) for t in patchscope_top]
    assert not any(lens_top[l] == germany[0] for l in range(model.n_layers + 1))


def test_experiment_001_reads_the_patchscope_as_a_third_lens(smollm2):
    """``read_probes`` with the patchscope's settings: its records at every layer and position
    are the hooked forward's, and the probe's JSON says where it reads the answer."""
    from workflow.config.settings import LensSettings, PatchscopeSettings
    from workflow.lens.run import read_probes

    model = smollm2
    probe = {"id": "germany", "prompt": SOURCE, "answer": " Berlin"}
    readings = read_probes(model, [probe], LensSettings(positions="all", top_k=3), patchscope=PatchscopeSettings())
    rows = [r for r in readings.rows if r["lens"] == "patchscope"]
    source = model.tokenizer(SOURCE, add_special_tokens=True)["input_ids"]
    assert len(rows) == (model.n_layers + 1) * len(source)
    inspection = model.tokenizer(INSPECTION_PROMPT, add_special_tokens=True)["input_ids"]
    residuals, _ = model.backend.capture(source, "all")
    berlin = model.tokenizer(" Berlin", add_special_tokens=False)["input_ids"][0]
    by_cell = {(r["layer"], r["position"]): r for r in rows}
    for layer, position in ((0, 1), (9, len(source) - 1), (20, 2), (model.n_layers, len(source) - 1)):
        probs = torch.softmax(hooked_patchscope(model, inspection, residuals[layer, position], layer, -1), -1)
        row = by_cell[layer, position]
        assert row["answer_prob"] == pytest.approx(float(probs[berlin]), abs=1e-6, rel=1e-3)
        assert row["topk_tokens"][0] == model.tokenizer.decode([int(probs.argmax())])
    # At the last layer nothing runs after the write at the last token: the logit lens's own row.
    logit = {(r["layer"], r["position"]): r for r in readings.rows if r["lens"] == "logit"}
    last = (model.n_layers, len(source) - 1)
    assert by_cell[last]["answer_prob"] == pytest.approx(logit[last]["answer_prob"], rel=1e-5)
    summary = readings.probes[0]
    assert set(summary["patchscope"]) == {"first_top1_layer", "stable_top1_layer"}
    tops = [r["top1_token"] == " Berlin" for r in sorted(rows, key=lambda r: r["layer"]) if r["position"] == len(source) - 1]
    assert summary["patchscope"]["first_top1_layer"] == (tops.index(True) if any(tops) else None)


def test_the_pipeline_runs_001_with_the_patchscope_lens(default_run, tmp_path):
    """lenses: [logit, patchscope]: the dry run says why run_lens runs again, its records and
    JSON hold the third lens, it has its heatmaps, and the evaluation reads it."""
    import json

    import yaml

    from pipeline import private_copy, said, snakemake, write_config
    from workflow.lens.records import read_records

    workdir = private_copy(default_run, tmp_path / "wd")
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    write_config(workdir, {**config, "lenses": ["logit", "patchscope"]})
    plan = snakemake(workdir, "-n", "results/001/evaluation-tiny-llama.md")
    assert plan.returncode == 0, said(plan)
    assert 'run_lens tiny-llama: lenses ["logit"] -> ["logit", "patchscope"]' in said(plan)
    run = snakemake(workdir, "--cores", "2", "results/001/evaluation-tiny-llama.md")
    assert run.returncode == 0, said(run)
    results = workdir / "results" / "001"
    summary = json.loads((results / "output-tiny-llama.json").read_text())
    assert summary["lenses"] == ["logit", "patchscope"] and summary["patchscope"]["position"] == -1
    assert all("patchscope" in p for p in summary["probes"])
    records = read_records(results / "output-tiny-llama-records.csv")
    assert (records["lens"] == "patchscope").sum() == (records["lens"] == "logit").sum() > 0
    probe = summary["probes"][0]["id"]
    assert (results / "plots" / "tiny-llama" / f"patchscope-heatmap-{probe}.png").stat().st_size > 0
    evaluation = (results / "evaluation-tiny-llama.md").read_text()
    assert "the patchscope lens never reads it as top-1" in evaluation or "through the patchscope lens" in evaluation

"""Experiment 004, components, as a pipeline unit: the chain from nothing on the tiny models,
its records against plain transformers forwards written here (the model's own logits, one
hooked patched forward per checked site), AtP's recorded agreement against a rank
correlation recomputed from the records, the offline analyst's figures against the
records, the run-time exactness check failing a job, and a changed setting re-running
experiment 004 alone. The attribution and patching themselves are tested in
test_exp004_dla.py and test_exp004_patching.py."""

import json

import pandas as pd
import pytest
import torch

from conftest import PAIRS
from workflow.experiments.exp004.records import read_component_records

MODELS = ("tiny-llama", "tiny-gemma3")


def _outputs(run, model):
    results = run / "results" / "004"
    summary = json.loads((results / f"output-{model}.json").read_text())
    return summary, read_component_records(str(results / f"output-{model}-records.csv"), summary)


def test_the_chain_builds_from_nothing(component_run):
    from pipeline import files_under

    results = component_run / "results" / "004"
    names = files_under(results)
    for model in MODELS:
        for name in (f"output-{model}.json", f"output-{model}-records.csv", f"evaluation-{model}.md",
                     f"plots/{model}/components-germany-france.png", f"plots/{model}/components-berlin-paris.png",
                     f"provenance/output-{model}.prov.json", f"provenance/evaluation-{model}.prov.json"):
            assert name in names, name
    assert "evaluation-cross-model.md" in names and "plots/cross-model-components.png" in names
    # Experiment 004 reads nothing of 001-003: asking for its comparison ran none of them.
    assert not (component_run / "results" / "002" / "output-tiny-llama.json").exists()
    assert not (component_run / "results" / "001" / "output-tiny-llama.json").exists()
    single = (results / "evaluation-tiny-llama.md").read_text()
    assert single.startswith("# tiny-llama: components (experiment 004)")
    for heading in ("## Which components write the answer", "## Which components write the competitor", "## Component patching",
                    "## Attribution patching against exact patching", "## Caveats"):
        assert heading in single
    assert "plots/tiny-llama/components-germany-france.png" in single
    cross = (results / "evaluation-cross-model.md").read_text()
    assert "## Agreement of attribution patching" in cross and "plots/cross-model-components.png" in cross
    log = (component_run / "logs" / "004" / "run_components-tiny-llama.log").read_text()
    assert "pair 2/2 berlin-paris" in log and "exact patching" in log


def _hf(tiny_dirs, arch):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=torch.float32, attn_implementation="eager").eval()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_attributions_add_up_to_a_plain_forwards_logits(component_run, tiny_dirs, arch):
    """The records' attention and MLP shares plus the JSON's embedding and bias terms are the
    logit a plain transformers forward gives each target (before Gemma's soft-capping)."""
    summary, frame = _outputs(component_run, f"tiny-{arch}")
    model = _hf(tiny_dirs, arch)
    assert summary["heads"]["exposed"] and summary["heads"]["n_heads"] == model.config.num_attention_heads
    for pair in summary["pairs"]:
        with torch.no_grad():
            logits = model(torch.tensor([pair["clean_input_ids"]])).logits[0, -1].double()
        cap = model.config.final_logit_softcapping if arch == "gemma3" else None
        if cap:
            logits = cap * torch.atanh(logits / cap)
        rows = frame[(frame.pair == pair["id"]) & frame.component.isin(["attention", "mlp"])
                     & (frame.position == len(pair["clean_tokens"]) - 1)]
        heads = frame[(frame.pair == pair["id"]) & frame.component.str.startswith("head")
                      & (frame.position == len(pair["clean_tokens"]) - 1)]
        assert len(rows) == 2 * summary["n_layers"]
        for target, t in pair["targets"].items():
            total = rows[f"dla_{target}"].sum() + t["dla_embedding"] + t["dla_constant"]
            assert abs(total - float(logits[t["token_id"]])) < 1e-3, (pair["id"], target)
            # The heads add up to their attention, block by block (the records are rounded to 6 digits).
            by_block = heads.groupby("layer")[f"dla_{target}"].sum()
            attention = rows[rows.component == "attention"].set_index("layer")[f"dla_{target}"]
            assert (by_block - attention).abs().max() < 1e-4
        competitor = pair["targets"]["competitor"]["token_id"]
        order = torch.argsort(logits, descending=True).tolist()
        assert competitor == next(i for i in order if i != pair["targets"]["answer"]["token_id"])


def _patched_logit_diff(model, corrupted, clean_value, layer, site, position, answers):
    """A plain transformers forward of the corrupted prompt with one component's clean
    output written at one position (forward hooks written here)."""
    attention = model.model.layers[layer].self_attn
    if site.startswith("head"):
        h, width = int(site[4:]), attention.head_dim
        part = slice(h * width, (h + 1) * width)

        def write(module, args):
            args[0][0, position, part] = clean_value[position, part]

        handle = attention.o_proj.register_forward_pre_hook(write)
    else:
        module = attention if site == "attention" else model.model.layers[layer].mlp

        def write(module, args, output):
            (output[0] if isinstance(output, tuple) else output)[0, position] = clean_value[position]

        handle = module.register_forward_hook(write)
    try:
        with torch.no_grad():
            logits = model(torch.tensor([corrupted])).logits[0, -1]
    finally:
        handle.remove()
    return float(logits[answers[0]] - logits[answers[1]])


def _clean_values(model, ids, layer):
    seen = {}
    attention = model.model.layers[layer].self_attn
    handles = [
        attention.register_forward_hook(lambda m, a, o: seen.__setitem__("attention", o[0][0].clone())),
        model.model.layers[layer].mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o[0].clone())),
        attention.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0][0].clone())),
    ]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return seen


def test_exact_patching_records_match_a_hooked_forward_per_site(component_run, tiny_dirs):
    summary, frame = _outputs(component_run, "tiny-gemma3")
    model = _hf(tiny_dirs, "gemma3")
    pair = summary["pairs"][1]
    answers = (pair["targets"]["answer"]["token_id"], pair["targets"]["corrupted_answer"]["token_id"])
    rows = frame[(frame.pair == pair["id"]) & frame.exact.notna()]
    # The three sites of largest effect and one of each kind.
    checked = pd.concat([rows.reindex(rows.exact.abs().sort_values(ascending=False).index).head(3),
                         rows[rows.component == "attention"].head(1), rows[rows.component == "mlp"].tail(1),
                         rows[rows.component == "head1"].tail(1)])
    span = pair["logit_diff_clean"] - pair["logit_diff_corrupted"]
    for _, row in checked.iterrows():
        clean = _clean_values(model, pair["clean_input_ids"], int(row.layer))
        value = clean["z"] if row.component.startswith("head") else clean[row.component]
        ld = _patched_logit_diff(model, pair["corrupted_input_ids"], value, int(row.layer), row.component, int(row.position), answers)
        assert abs((ld - pair["logit_diff_corrupted"]) / span - row.exact) < 1e-3, row.to_dict()


def test_recorded_agreement_is_the_records_rank_correlation(component_run):
    for model in MODELS:
        summary, frame = _outputs(component_run, model)
        for pair in summary["pairs"]:
            rows = frame[(frame.pair == pair["id"]) & frame.exact.notna()]
            # Before the prompts differ both runs write the same: exactly 0 in both, and not compared.
            subject = min(pair["subject_positions"])
            assert (rows[rows.position < subject][["exact", "atp"]] == 0).all().all()
            rows = rows[(rows.exact != 0) | (rows.atp != 0)]
            assert rows.position.min() == subject
            spearman = rows.exact.rank().corr(rows.atp.rank())
            assert len(rows) == pair["atp_agreement"]["sites"]
            # The records are rounded to 6 digits: ties may rank a hair differently.
            assert abs(spearman - pair["atp_agreement"]["spearman"]) < 0.02, (model, pair["id"])
            top = set(rows.exact.abs().nlargest(5).index) & set(rows.atp.abs().nlargest(5).index)
            assert abs(len(top) / 5 - pair["atp_agreement"]["top5_overlap"]) <= 0.2
            assert rows.grad_drop.notna().all() and (rows.grad_drop >= 0).all()


def test_offline_figures_are_the_records(component_run):
    """The largest share the analyst names per pair is the records' largest answer-minus-competitor
    share, and its patching row the records' largest |recovered|."""
    results = component_run / "results" / "004"
    for model in MODELS:
        summary, frame = _outputs(component_run, model)
        text = (results / f"evaluation-{model}.md").read_text()
        for pair in summary["pairs"]:
            last = frame[(frame.pair == pair["id"]) & (frame.position == len(pair["clean_tokens"]) - 1)]
            diff = (last.dla_answer - last.dla_competitor)
            top = last.loc[diff.idxmax()]
            words = {"mlp": f"the MLP of block {top.layer}", "attention": f"the attention of block {top.layer}"}.get(
                top.component, f"head {top.component.removeprefix('head')} of block {top.layer}")
            assert f"the largest single share is {words} ({diff.max():+.2f})" in text, (model, pair["id"])
            patched = frame[(frame.pair == pair["id"]) & frame.exact.notna()]
            best = patched.loc[patched.exact.abs().idxmax()]
            assert f"L{best.layer}.{best.component} at position {best.position} ({best.token!r}) {best.exact:+.2f}" in text


def test_a_changed_setting_reruns_experiment_004_alone(component_run, tmp_path):
    import shutil

    import yaml

    from pipeline import planned_jobs, said, snakemake

    workdir = tmp_path / "wd"
    shutil.copytree(component_run, workdir, symlinks=True)
    assert "Nothing to be done" in said(snakemake(workdir, "-n", "results/004/evaluation-cross-model.md"))
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["components"]["top_k"] = 3
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", "results/004/evaluation-cross-model.md")
    jobs = planned_jobs(said(result))
    assert jobs[("run_components", "tiny-llama")] == 1 and jobs[("run_components", "tiny-gemma3")] == 1
    assert not any(rule in ("run_lens", "run_patching", "prepare_model") for rule, _ in jobs)
    assert "components.top_k 5 -> 3" in said(result)


def test_the_explorer_page_shows_every_pair_and_component(component_run, tmp_path):
    """The rule explorer makes experiment 004's page from its records (the page's script is
    checked in a browser by tests/test_explorer.py)."""
    import re
    import shutil

    from pipeline import said, snakemake

    workdir = tmp_path / "wd"
    shutil.copytree(component_run, workdir, symlinks=True)
    page = workdir / "results" / "004" / "html" / "explorer-tiny-llama.html"
    result = snakemake(workdir, "--cores", "1", str(page.relative_to(workdir)))
    assert result.returncode == 0, said(result)[-3000:]
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S).group(1))
    summary, frame = _outputs(workdir, "tiny-llama")
    assert data["kind"] == "components" and [p["id"] for p in data["pairs"]] == [p["id"] for p in summary["pairs"]]
    heads = [f"head{h}" for h in range(summary["heads"]["n_heads"])] if summary["heads"]["exposed"] else []
    for pair in data["pairs"]:
        assert [v["component"] for v in pair["sweeps"]] == ["attention", "mlp", *heads]
        rows = frame[(frame.pair == pair["id"]) & (frame.component == "mlp")]
        view = pair["sweeps"][1]
        assert [cell[0] for layer in view["cells"] for cell in layer] == pytest.approx(
            rows.sort_values(["layer", "position"]).exact.tolist(), nan_ok=True)


def _session(loaded, arch):
    from workflow.model.load import load_model

    return load_model(f"tiny-{arch}", {"source": "local", "path": str(loaded)}, None, device="cpu", dtype="float32", backend="hooks")


def test_attributions_that_do_not_add_up_fail_naming_the_pair(tiny_dirs):
    from workflow.experiments.exp004.run import ComponentSettings, ExactnessError, run_components
    from workflow.config.settings import LensSettings

    model = _session(tiny_dirs["llama"], "llama")
    with pytest.raises(ExactnessError, match=r"pair 'germany-france': the direct logit attributions do not add up .*off by"):
        run_components(model, PAIRS[:1], ComponentSettings(exact=False, grad_drop=False), LensSettings(identity_tolerance=1e-12))


def test_without_exact_patching_atp_stands_unchecked(tiny_dirs, tmp_path):
    from workflow.experiments.exp004.analysis import model_facts
    from workflow.experiments.exp004.records import RECORD_COLUMNS
    from workflow.experiments.exp004.run import ComponentSettings, run_components
    from workflow.experiments.exp004.sections import SINGLE
    from workflow.lens.session import model_metadata
    from workflow.lens.records import write_outputs
    from workflow.config.settings import LensSettings

    model = _session(tiny_dirs["gemma3"], "gemma3")
    summary, rows = run_components(model, PAIRS[:1], ComponentSettings(exact=False, grad_drop=False), LensSettings())
    assert "atp_agreement" not in summary["pairs"][0]
    write_outputs(tmp_path / "s.json", tmp_path / "r.csv", {**model_metadata(model), **summary}, rows, RECORD_COLUMNS, ())
    facts = model_facts(tmp_path / "s.json", tmp_path / "r.csv")
    frame = read_component_records(str(tmp_path / "r.csv"), json.loads((tmp_path / "s.json").read_text()))
    assert frame.exact.isna().all() and frame.atp.notna().sum() > 0 and frame.grad_drop.isna().all()
    assert "unchecked" in SINGLE["attribution patching against exact patching"](facts)
    assert "switched off" in SINGLE["component patching"](facts)

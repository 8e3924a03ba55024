"""The Snakemake workflow end to end on tiny random models, and its handling of bad input."""

import base64
import json
import re

import pytest
import yaml

from conftest import PROBES, tiny_config
from pipeline import files_under, planning_error, private_copy, said, scratch_copy, snakemake, write_config
from workflow.evaluation.templates import heading_problems, load_template
from workflow.lens.records import read_records



@pytest.fixture(scope="module")
def finished(default_run, tmp_path_factory):
    """A scratch workflow run to completion (default target: everything) on the tiny models:
    this module's copy of the session's run (its tests write a report and re-run evaluations)."""
    return private_copy(default_run, tmp_path_factory.mktemp("pipeline") / "wd")


def test_full_run_writes_all_five_kinds_of_file(finished):
    results = finished / "results" / "001"
    for arch in ("llama", "gemma3"):
        summary = json.loads((results / f"output-tiny-{arch}.json").read_text())
        assert summary["n_layers"] == 3 and summary["lens"]["top_k"] == 3
        assert [p["id"] for p in summary["probes"]] == [p["id"] for p in PROBES]
        assert summary["identity_check"]["max_abs_prob_diff"] <= 1e-4
        for key in ("source", "architecture", "d_model", "vocab_size", "norm_type", "device", "dtype", "packages"):
            assert key in summary, key
        records = read_records(results / f"output-tiny-{arch}-records.csv")
        assert set(records["layer"]) == set(range(4))
        assert records["topk_tokens"].map(len).eq(3).all()
        template = load_template(finished / "prompts" / "001" / "single-model-evaluation.md")
        text = (results / f"evaluation-tiny-{arch}.md").read_text()
        assert heading_problems(text, template.headings) == []
        assert "No LLM was used" in text
        # The heatmaps are linked relative to the document, and the links resolve.
        link = f"](plots/tiny-{arch}/heatmap-capital.png)"
        assert link in text and (results / f"plots/tiny-{arch}/heatmap-capital.png").is_file()
    for stage, name in (("cross-model", "evaluation-cross-model.md"), ("meta", "evaluation-meta.md")):
        template = load_template(finished / "prompts" / "001" / f"{stage}-evaluation.md")
        text = (results / name).read_text()
        assert heading_problems(text, template.headings) == []
        assert "tiny-llama" in text and "tiny-gemma3" in text
    cross = (results / "evaluation-cross-model.md").read_text()
    # The answer by layer first among its figures, then the trajectories.
    assert 0 < cross.index("](plots/answer-by-layer.png)") < cross.index("](plots/cross-model-trajectories.png)")
    logs = files_under(finished / "logs")
    assert "001/run_lens-tiny-llama.log" in logs and "001/evaluate_meta.log" in logs


def report_data(html: str, name: str):
    """One of the JSON objects the Snakemake report embeds (`var categories = {...};`)."""
    match = re.search(rf"var {name} = (\{{.*?\}});\s*\n", html)
    assert match, f"the report embeds no {name}"
    return json.loads(match.group(1))


def test_report_is_self_contained_grouped_and_captioned(finished):
    result = snakemake(finished, "--report", "report.html")
    assert result.returncode == 0, said(result)[-3000:]
    html = (finished / "report.html").read_text(encoding="utf-8")
    heatmaps = [f"heatmap-{p['id']}.png" for p in PROBES]
    categories = report_data(html, "categories")
    # The report's menu sorts them: "» Start here" first (tests/test_pipeline.py, the first screen).
    assert list(categories) == ["tiny-llama", "tiny-gemma3", "» Start here", "Cross-model", "Method"]
    assert categories["» Start here"] == {"Answer by layer": ["results/001/plots/answer-by-layer.png"]}
    # It opens on an overview of the experiments and the run's models, not on one experiment,
    # and the overview opens with a link to the answer by layer.
    assert "Layer-by-layer lens experiments: overview" in html and "003, generation" in html
    assert "javascript:app.showResultInfo('results/001/plots/answer-by-layer.png')" in html
    assert "<strong>tiny-llama</strong>" in html and "<strong>tiny-gemma3</strong>" in html
    # Experiments 001, 003 and 005 (002 and 004 have no pairs in this config).
    run = ("001", "003", "005")
    tasks = ["translation-fr-de", "cloze-de"]  # conftest's tiny_config
    for model in ("tiny-llama", "tiny-gemma3"):
        assert sorted(categories[model]["Heatmaps"]) == sorted(f"results/001/plots/{model}/{h}" for h in heatmaps)
        assert sorted(categories[model]["Generation"]) == sorted(f"results/003/plots/{model}/generation-{p['id']}.png" for p in PROBES)
        assert sorted(categories[model]["Words or concepts"]) == sorted(f"results/005/plots/{model}/words-{t}.png" for t in tasks)
        assert sorted(categories[model]["Evaluation"]) == [f"results/{e}/html/evaluation-{model}.html" for e in run]
        assert categories[model]["Statistics"] == [f"results/001/plots/{model}/statistics.png"]
        assert sorted(categories[model]["Explorer"]) == [f"results/{e}/html/explorer-{model}.html" for e in run]
    assert {k: sorted(v) for k, v in categories["Cross-model"].items()} == {
        "Figures": ["results/001/plots/cross-model-trajectories.png", "results/003/plots/cross-model-settling.png",
                    "results/005/plots/cross-model-words.png"],
        "Evaluation": [f"results/{e}/html/evaluation-cross-model.html" for e in run],
    }
    assert sorted(categories["Method"]["Evaluation"]) == [f"results/{e}/html/evaluation-meta.html" for e in run]
    results = report_data(html, "results")
    for path, entry in results.items():
        assert entry["caption"].strip(), f"{path} has no caption"
        # Every result travels inside the file, byte for byte.
        data = entry["data_uri"].split("base64,", 1)[1]
        assert base64.b64decode(data) == (finished / path).read_bytes()
    assert "How to read it" in results["results/001/plots/tiny-llama/" + heatmaps[0]]["caption"]
    assert "tiny-llama" in results["results/001/plots/tiny-llama/" + heatmaps[0]]["caption"]
    assert "relative depth" in results["results/001/plots/cross-model-trajectories.png"]["caption"]
    assert "layer n the output of block n−1" in results["results/001/plots/answer-by-layer.png"]["caption"]
    assert not re.search(r'(src|href)="https?://', html)  # nothing fetched when opened offline
    # The evaluation pages carry their own figures.
    page = (finished / "results/001/html/evaluation-tiny-llama.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(PROBES) + 1  # the heatmaps and the statistics
    assert "<h2>Figures</h2>" in page


def test_the_reports_first_screen_is_the_overview(finished, browser, tmp_path):
    """In headless Chromium at 1400x1000 (tests/browser.py): the report opens on the overview,
    its title and its pointer to the answer by layer on the first screen (Snakemake centred
    it beside the rule graph, its top cut off out of reach), the rule graph below; the
    menu's first category is "» Start here", which shows the answer-by-layer figure."""
    from browser import console_errors, first_screen, on_first_screen, overflowing

    if not (finished / "report.html").is_file():
        result = snakemake(finished, "--report", "report.html")
        assert result.returncode == 0, said(result)[-3000:]
    browser.get((finished / "report.html").as_uri())
    title = browser.find_element("css selector", ".prose h1")
    first_screen(browser, tmp_path / "report.png")
    assert title.text == "Layer-by-layer lens experiments: overview" and on_first_screen(browser, title)
    start = browser.find_element("xpath", "//div[contains(@class, 'prose')]//p[strong[text()='Start here']]")
    assert on_first_screen(browser, start) and "answer-by-layer.png" in start.text
    overview = browser.find_element("css selector", ".prose")
    assert browser.execute_script("return arguments[0].getBoundingClientRect().width", overview) > 700  # not a narrow column
    graph_top = browser.execute_script("return document.querySelector('#rulegraph').getBoundingClientRect().top")
    assert graph_top > browser.execute_script("return arguments[0].getBoundingClientRect().bottom", overview)  # the graph below
    assert overflowing(browser) == []
    menu = [item.text for item in browser.find_element("css selector", "ul").find_elements("css selector", "li")]  # the navbar's
    assert menu[menu.index("RESULTS") + 1] == "» Start here", menu
    browser.find_element("xpath", "//*[text()='» Start here']").click()
    assert "answer-by-layer.png" in browser.find_element("css selector", "body").text
    # Snakemake's own page warns that its styles come from Tailwind's in-browser build.
    assert [e for e in console_errors(browser) if "cdn.tailwindcss.com should not be used in production" not in e] == []


def test_a_models_description_forms_no_markup_in_the_report(finished, tmp_path):
    """A model's description is the user's text: in the report's overview it stays text (an
    include or image directive in it embedded a local file and a remote beacon)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-FILE-CONTENT-4242\n")
    workdir = private_copy(finished, tmp_path / "copy")
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    model = next(iter(config["models"]))
    config["models"][model]["description"] = (f"a label\n\n.. include:: {secret}\n\n.. image:: https://example.org/beacon.png\n\n"
                                              ".. raw:: html\n\n   <script>alert(1)</script>\n\n`x <javascript:alert(1)>`_ **bold**")
    write_config(workdir, config)
    result = snakemake(workdir, "--report", "report.html")
    assert result.returncode == 0, said(result)[-3000:]
    html = (workdir / "report.html").read_text(encoding="utf-8")
    assert "SECRET-FILE-CONTENT-4242" not in html
    assert not re.search(r'(src|href)="https?://', html)  # no beacon fetched when opened
    assert "alert(1)</script>" not in html and 'href="javascript' not in html
    assert "a label" in html and ".. include::" in html
    assert "System Message" not in html  # the overview is well-formed (each model its own item)


def test_nothing_left_to_do_after_a_full_run(finished):
    result = snakemake(finished, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in said(result)


def test_evaluations_are_reproducible(finished):
    results = finished / "results" / "001"
    before = {p.name: p.read_bytes() for p in results.glob("evaluation-*.md")}
    result = snakemake(finished, "--forcerun", "evaluate_model", "evaluate_cross", "evaluate_meta", "all")
    assert result.returncode == 0, said(result)[-3000:]
    after = {p.name: p.read_bytes() for p in results.glob("evaluation-*.md")}
    assert before == after


def test_unknown_model_in_target(finished):
    result = snakemake(finished, "results/001/output-nosuchmodel.json")
    planning_error(result, "unknown model 'nosuchmodel'", "tiny-llama, tiny-gemma3")
    assert not (finished / "results" / "001" / "output-nosuchmodel.json").exists()


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["lens"].update(positions="middle"), "key 'lens.positions'"),
        (lambda c: c["probes"][0].update(prompt=""), "key 'probes[0].prompt'"),
        (lambda c: c["models"]["tiny-llama"].update(source="s3"), "key 'models.tiny-llama.source'"),
    ],
)
def test_config_that_fails_the_schema(tiny_dirs, tmp_path, edit, expected):
    config = tiny_config(tiny_dirs)
    edit(config)
    workdir = scratch_copy(tmp_path, config)
    result = snakemake(workdir, "-n")
    planning_error(result, "config/config.yaml: invalid value at " + expected)
    assert files_under(workdir / "results") == []


def test_missing_gguf_path(tiny_dirs, tmp_path):
    config = tiny_config(tiny_dirs)
    config["models"] = {"lost": {"source": "gguf", "path": str(tmp_path / "nowhere.gguf")}}
    workdir = scratch_copy(tmp_path / "wd", config)
    result = snakemake(workdir, "results/001/evaluation-cross-model.md")
    planning_error(result, "model 'lost': GGUF file", "does not exist", "models.lost.path")
    assert files_under(workdir / "results") == [] and files_under(workdir / "resources") == []


def test_failed_lens_job_leaves_no_partial_output(tiny_dirs, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": "not a number"}')
    config = tiny_config(tiny_dirs)
    config["models"] = {"broken": {"source": "local", "path": str(broken)}}
    workdir = scratch_copy(tmp_path / "wd", config)
    result = snakemake(workdir, "results/001/output-broken.json")
    assert result.returncode != 0
    assert files_under(workdir / "results") == []
    # The job's own log says why it failed, traceback included (not only Snakemake's console).
    log = (workdir / "logs" / "001" / "run_lens-broken.log").read_text()
    assert "rule run_lens failed" in log and "Traceback (most recent call last)" in log


def test_a_shipped_relation_runs_with_statistics_and_parquet_records(tiny_dirs, tmp_path):
    """One config change runs a relation of the shipped data, both directions; the
    evaluations report intervals; Parquet records hold what the JSON describes; the batch
    size re-runs nothing."""
    from workflow.lens.records import load_checked

    config = tiny_config(
        tiny_dirs,
        probes={"relations": ["country_capital_city"], "directions": "both", "limit": 10},
        lens={"top_k": 3, "records_format": "parquet"},
    )
    workdir = scratch_copy(tmp_path, config)
    result = snakemake(workdir, "results/001/evaluation-cross-model.md")
    assert result.returncode == 0, said(result)[-3000:]
    results = workdir / "results" / "001"
    for model in ("tiny-llama", "tiny-gemma3"):
        summary = json.loads((results / f"output-{model}.json").read_text())
        assert len(summary["probes"]) == 20 and summary["lens"]["positions"] == "all"
        assert all("answer_logprob" in p and len(p["final_top1_prob_by_temperature"]) == 13 for p in summary["probes"])
        frame = load_checked(results / f"output-{model}-records.parquet", results / f"output-{model}.json")
        assert set(frame["probe"]) == {p["id"] for p in summary["probes"]}
        assert (results / "plots" / model / "statistics.png").stat().st_size > 10_000
        evaluation = (results / f"evaluation-{model}.md").read_text()
        statistics = evaluation.split("## Statistics", 1)[1].split("\n## ", 1)[0]
        assert "accuracy (final top-1 = the answer's first token)" in statistics and "95% CI" in statistics
        assert "forward against reverse on 10 facts stated both ways" in statistics
    cross = (results / "evaluation-cross-model.md").read_text()
    assert "95% CI" in cross.split("## Statistics", 1)[1].split("\n## ", 1)[0]
    assert not (results / "output-tiny-llama-records.csv").exists()
    again = snakemake(workdir, "-n", "results/001/evaluation-cross-model.md", "--config", "lens={top_k: 3, records_format: parquet, batch_size: 3}")
    assert again.returncode == 0 and "Nothing to be done" in said(again), said(again)[-2000:]

"""LLM-written evaluations worth trusting: the content contract (every required section has
content; one repair asks for the failing sections only and keeps the good ones), and every
figure looked up in the data the evaluator was given. A stand-in server answers as weak
models did: headings alone, a partial document, invented figures."""

import json
import logging

import pytest

from conftest import REPO
from llm_server import MARKER
from workflow.base.errors import UserError
from workflow.evaluation import figures as fig
from workflow.evaluation import providers
from workflow.evaluation.providers import ProviderError
from workflow.evaluation.run import EvaluationError, evaluate
from workflow.evaluation.templates import failing_sections, load_template

MODEL = "smollm2-135m-instruct"
TEMPLATE = REPO / "prompts" / "003" / "single-model-evaluation.md"
HEADINGS = load_template(TEMPLATE).headings  # Summary, Where generated tokens settle, ...
PATHS = {"summary": str(REPO / "results" / "003" / f"output-{MODEL}.json"),
         "records": str(REPO / "results" / "003" / f"output-{MODEL}-records.csv")}
GOOD = "The model settles content words deeper than function words across the nine replies it wrote."


def run(llm, tmp_path, template=TEMPLATE, **extra):
    settings = {"provider": "openai", "model": "weak-model", "base_url": llm.openai_url, "max_retries": 0,
                "timeout": 30, "cache_dir": str(tmp_path / "cache"), **extra}
    return evaluate("single-model", "003", [PATHS], str(template), settings, str(tmp_path / "evaluation.md"))


def document(bodies: dict[str, str], title: str = "") -> str:
    return (title + "\n\n" if title else "") + "\n\n".join(f"## {h}\n\n{b}" for h, b in bodies.items()) + "\n"


def test_headings_alone_are_never_written(llm, tmp_path):
    """The case measured with a real server: a first answer that missed five headings, and a
    repair answered with the six headings alone (134 characters)."""
    llm.script = [document({HEADINGS[0]: GOOD}), "\n".join(f"## {h}" for h in HEADINGS)]
    with pytest.raises(EvaluationError, match="content contract") as info:
        run(llm, tmp_path)
    assert "'## Where generated tokens settle' is empty" in str(info.value) and "response cache" in str(info.value)
    assert not (tmp_path / "evaluation.md").exists()
    assert len(llm.requests) == 2


def test_a_partial_document_is_completed_keeping_its_good_sections(llm, tmp_path):
    first = {HEADINGS[0]: GOOD, HEADINGS[1]: "Most tokens settle in the last tenth of the depth: 68 of 99 tokens."}
    llm.script = [document(first)]  # then the server answers the repair with the headings it was asked for
    written = run(llm, tmp_path)
    repair = llm.requests[1]["body"]["messages"][-1]["content"]
    # Only the failing sections were asked for; the good ones are kept as they were.
    assert "## Content and function words" in repair and "## Summary" not in repair and "## Where generated" not in repair
    text = (tmp_path / "evaluation.md").read_text()
    assert text.startswith(f"# {MODEL}: generation (experiment 003)\n")
    assert GOOD in text and "68 of 99 tokens" in text
    for heading in HEADINGS[2:]:
        assert f"{MARKER}: the test server's text under '{heading}'" in text
    assert [h for h, _ in failing_sections(text, HEADINGS, 40).items()] == []
    assert written.repair["sections_repaired"] == list(HEADINGS[2:])
    assert "section '## Content and function words' is empty" not in written.repair["problems"]  # it was missing
    assert "heading '## Content and function words' is missing" in written.repair["problems"]


def test_empty_and_stub_sections_are_asked_for_again(llm, tmp_path):
    bodies = {h: GOOD for h in HEADINGS}
    bodies[HEADINGS[2]] = ""
    bodies[HEADINGS[3]] = "See above."
    llm.script = [document(bodies)]
    written = run(llm, tmp_path)
    assert written.repair["problems"] == [
        "section '## Content and function words' is empty",
        "section '## Logit and tuned lens' has 10 characters of content, fewer than 40",
    ]
    text = (tmp_path / "evaluation.md").read_text()
    assert "See above." not in text and f"under '{HEADINGS[3]}'" in text


def test_the_minimum_is_a_template_setting(llm, tmp_path):
    template = tmp_path / "single-model-evaluation.md"
    template.write_text(TEMPLATE.read_text().replace("headings:\n", "min_section_chars: 5\nheadings:\n", 1))
    bodies = {h: GOOD for h in HEADINGS}
    bodies[HEADINGS[3]] = "See above."
    llm.script = [document(bodies)]
    written = run(llm, tmp_path, template)
    assert written.repair is None and len(llm.requests) == 1
    bad = tmp_path / "bad.md"
    bad.write_text(TEMPLATE.read_text().replace("headings:\n", "min_section_chars: none\nheadings:\n", 1))
    with pytest.raises(UserError, match="min_section_chars"):
        load_template(bad)


def test_an_invented_figure_is_marked_listed_and_recorded(llm, tmp_path):
    bodies = {h: GOOD for h in HEADINGS}
    # From the digest: 99 tokens, 0.85, layers 30 and 24 of ' Berlin'. Invented: 0.4242.
    bodies[HEADINGS[0]] = ("SmolLM2 generated 99 tokens; the probability that a content word settles deeper is 0.85, and "
                           "' Berlin' settles at layer 30 (24 through the tuned lens). Its final probability is 0.4242.")
    llm.script = [document(bodies, "# My own title")]
    written = run(llm, tmp_path)
    text = (tmp_path / "evaluation.md").read_text()
    assert text.startswith(f"# {MODEL}: generation (experiment 003)\n") and "My own title" not in text
    assert "0.4242 [not in the data]" in text and "0.85 [not" not in text and "99 [not" not in text
    verification = text.split("## Verification", 1)[1]
    assert "0.4242 (Summary)" in verification and "1 not found" in verification
    assert written.figures["figures_not_found"] == [{"figure": "0.4242", "section": "Summary"}]
    assert written.figures["figures_checked"] == 5
    assert written.provenance()["figures"] == written.figures


def test_strict_mode_fails_the_job_naming_the_figure(llm, tmp_path):
    template = tmp_path / "single-model-evaluation.md"
    template.write_text(TEMPLATE.read_text().replace("headings:\n", "figures: strict\nheadings:\n", 1))
    bodies = {h: GOOD for h in HEADINGS}
    bodies[HEADINGS[1]] = "Probe capital-germany settles at a median depth of 0.6173."
    llm.script = [document(bodies)]
    with pytest.raises(EvaluationError, match=r"0\.6173 \(section 'Where generated tokens settle'\)"):
        run(llm, tmp_path, template)
    assert not (tmp_path / "evaluation.md").exists()


def test_a_pipeline_run_with_an_llm_records_the_check(llm, tiny_dirs, tmp_path):
    """Through Snakemake: the evaluation's provenance record keeps the list of figures not found."""
    from conftest import tiny_config
    from pipeline import finished_run

    answer = document({h: f"{GOOD} It settles at depth 0.1234." for h in ("Summary", "Where the answer emerges")})
    config = tiny_config(tiny_dirs, lenses=["logit"], probes=[{"id": "capital", "prompt": "The capital of Germany is", "answer": " Berlin"}],
                         evaluation={"provider": "openai", "model": "weak-model", "base_url": llm.openai_url, "max_retries": 0})
    llm.script = [answer]
    workdir = finished_run(tmp_path / "run", config, "results/001/evaluation-tiny-llama.md", cores=1)
    record = json.loads((workdir / "results" / "001" / "provenance" / "evaluation-tiny-llama.prov.json").read_text())
    found = json.dumps(record)
    assert '"figures_not_found"' in found and "0.1234" in found
    assert "0.1234 [not in the data]" in (workdir / "results" / "001" / "evaluation-tiny-llama.md").read_text()


@pytest.mark.parametrize("experiment", ["001", "002", "003"])
def test_the_offline_analysts_documents_pass(experiment, tmp_path):
    """By construction: its figures are the data's. Most are in the prompt itself (the digest);
    the rest (a median, a count) it computes from the same records."""
    import workflow.evaluation.run as evaluation_run
    from workflow.evaluation.providers import EvaluationRequest, OfflineProvider

    seen = {}

    def capture(exp, stage, title, template_path, variables, facts, settings, output_path, figures=None):
        template = load_template(template_path)
        prompt = template.render(variables)
        request = EvaluationRequest(stage, title, template.system, prompt, template.headings, facts, exp.sections[stage])
        seen["text"], seen["prompt"] = OfflineProvider().complete(request), prompt

    paths = {"summary": str(REPO / "results" / experiment / f"output-{MODEL}.json"),
             "records": str(REPO / "results" / experiment / f"output-{MODEL}-records.csv")}
    if experiment == "002":
        paths["lens_summary"] = str(REPO / "results" / "001" / f"output-{MODEL}.json")
    original = evaluation_run._write
    evaluation_run._write = capture
    try:
        evaluate("single-model", experiment, [paths], str(REPO / "prompts" / experiment / "single-model-evaluation.md"),
                 {"provider": "offline"}, str(tmp_path / "x.md"))
    finally:
        evaluation_run._write = original
    text, prompt = seen["text"], seen["prompt"]
    assert fig.verify(text, fig.Evidence(prompt, text)).unsupported == []
    alone = fig.verify(text, fig.Evidence(prompt))
    assert alone.checked > 50 and len(alone.unsupported) <= 0.05 * alone.checked


def test_figures_are_read_as_a_reader_reads_them():
    text = ("## Summary\n\nOn gemma-3-270m and SmolLM2-135M (Llama-3-8B aside) the answer is top-1 at layers 13-16, "
            "with 0.52 (52%) at layer 24 of 30; KL to within 1e-05; 1,024 probes; `0.999` is code; "
            "[a link](plots/x-0.3.png).\n1. a list marker\n## Details 2\n-3.5 nats\n")
    found = [(f.text, f.value, f.quantum, f.section) for f in fig.extract(text)]
    assert found == [
        ("13", 13, 1, "Summary"), ("16", 16, 1, "Summary"), ("0.52", 0.52, 0.01, "Summary"), ("52%", 52, 1, "Summary"),
        ("24", 24, 1, "Summary"), ("30", 30, 1, "Summary"), ("1e-05", 1e-05, 1e-05, "Summary"),
        ("1,024", 1024, 1, "Summary"), ("3.5", 3.5, 0.1, "Details 2"),
    ]


def test_numbers_beyond_a_float_are_read_not_fatal():
    """A prompt or digest can hold any text (a random model's tokens: "9e999"); reading it
    must not stop the evaluation job (an OverflowError did)."""
    (huge,) = fig.extract("a token 9e999 here")
    assert huge.value == float("inf") and huge.quantum == 1e300
    (tiny,) = fig.extract("a token 1e-999 here")
    assert tiny.value == 0.0 and tiny.quantum == 1e-320
    assert not fig.Evidence("the data hold 0.5").supports(huge)


def test_a_figure_is_supported_within_the_datas_rounding():
    evidence = fig.Evidence("p 0.5213, depth 0.52, layer 24, share 0.85, 1e-05, entropy 3.0")
    def ok(text):
        (figure,) = fig.extract(text)
        return evidence.supports(figure)
    assert ok("0.52") and ok("0.521") and ok("0.5") and ok("24") and ok("85%") and ok("0.850") and ok("1e-05") and ok("3")
    assert not ok("0.5214")  # more precise than anything given
    assert not ok("0.53") and not ok("25") and not ok("0.4242") and not ok("86%")
    # What an earlier evaluation marked is not evidence for the next one.
    assert not fig.Evidence("it is 0.77" + fig.MARK).supports(fig.extract("0.77")[0])


def test_progress_is_logged_and_timeout_bounds_the_whole_answer(llm, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(providers, "PROGRESS_EVERY", 0.05)
    llm.piece_delay = 0.02
    caplog.set_level(logging.INFO, logger="workflow")
    long_answer = document({h: GOOD * 3 for h in HEADINGS})
    llm.script = [long_answer]
    run(llm, tmp_path)
    assert any("pieces of the answer in" in r.getMessage() for r in caplog.records)
    llm.reset()
    llm.piece_delay = 0.05
    llm.script = [long_answer]
    with pytest.raises(ProviderError, match="longer than evaluation.timeout"):
        run(llm, tmp_path / "slow", timeout=1)
    assert not (tmp_path / "slow" / "evaluation.md").exists()


def test_a_long_wait_for_an_answer_that_is_not_streamed_is_logged(llm, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(providers, "PROGRESS_EVERY", 0.05)
    llm.answer_delay = 0.3
    caplog.set_level(logging.INFO, logger="workflow")
    run(llm, tmp_path, provider="anthropic", base_url=llm.anthropic_url)
    assert any("waiting for the answer" in r.getMessage() for r in caplog.records)


def test_numbers_in_the_users_own_probe_text_are_not_evidence():
    facts = [{"probes": [{"id": "p", "prompt": "Within 0.999 of the capital of Germany is", "answer": " Berlin"}]}]
    quoted = 'probe p: "Within 0.999 of the capital of Germany is" -> " Berlin", final probability 0.81'
    (invented,) = fig.extract("It is 0.999 sure.")
    assert fig.Evidence(quoted).supports(invented)  # without knowing the user's text
    evidence = fig.Evidence(quoted, user=fig.user_texts(facts))
    assert not evidence.supports(invented)
    assert evidence.supports(fig.extract("p = 0.81")[-1])


def test_an_invented_figure_that_only_a_probe_prompt_holds_is_marked(llm, tmp_path, monkeypatch):
    """Through the evaluation: a figure found only in the user's probe text is not in the data."""
    from dataclasses import replace

    from workflow.evaluation import run as run_module

    real = run_module.checked_figures

    def with_a_numeric_prompt(text, prompt, request, template, provider):
        facts = request.facts  # one model's facts
        facts.probes[0] = replace(facts.probes[0], prompt=facts.probes[0].prompt + " (within 0.9871)")
        prompt = prompt + "\nprobe prompt: " + facts.probes[0].prompt
        return real(text, prompt, request, template, provider)

    monkeypatch.setattr(run_module, "checked_figures", with_a_numeric_prompt)
    bodies = {h: GOOD for h in HEADINGS}
    bodies[HEADINGS[0]] = "The model is 0.9871 sure of its replies."
    llm.script = [document(bodies)]
    run(llm, tmp_path)
    assert "0.9871 [not in the data]" in (tmp_path / "evaluation.md").read_text()


def test_every_experiments_digest_writes_the_models_source_one_way():
    """The model's source (its config entry's identifying fields) reads the same in the
    digest of every experiment: JSON with sorted keys, from the same JSON field."""
    from workflow.evaluation.experiment import experiment

    source = json.loads((REPO / "results" / "001" / f"output-{MODEL}.json").read_text())["source"]
    written = f"source {json.dumps(source, sort_keys=True)}"
    for exp in ("001", "002", "003"):
        paths = {"summary": str(REPO / "results" / exp / f"output-{MODEL}.json"),
                 "records": str(REPO / "results" / exp / f"output-{MODEL}-records.csv")}
        if exp == "002":
            paths["lens_summary"] = str(REPO / "results" / "001" / f"output-{MODEL}.json")
        found = experiment(exp)
        facts = found.model_facts(**paths)
        assert facts.source == source, exp
        assert written in found.digest(facts, 100_000), exp

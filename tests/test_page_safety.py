"""No evaluation page embeds, links or fetches anything but the pipeline's own figures, and no
text the user or a model wrote forms markup in an evaluation, whichever way it gets there:
an LLM's answer, or the offline analyst quoting a probe's relation, style, answer or
warnings, a pair, a model's tokens, a model key. A number in the user's text is no evidence
for an LLM's figure either."""

import base64
import dataclasses
import html
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from conftest import PROBES, REPO, tiny_config
from pipeline import finished_run
from workflow.evaluation import figures as fig
from workflow.evaluation.analyst import write
from workflow.evaluation.templates import load_template
from workflow.evaluation.text import code, escaped, table, tok
from workflow.evaluation.experiment import experiment
from workflow.report.pages import render_page

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
SECRET = "sk-page-safety-0123456789"
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


def data_uris(page: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r'src="data:[^;"]*;base64,([^"]*)"', page)]


@pytest.fixture
def workdir(tmp_path):
    """A project-like tree: an evaluation in results/001/, its figure, a config holding a
    secret two levels up, a secret outside reached through a symlink among the plots."""
    results = tmp_path / "results" / "001"
    (results / "plots").mkdir(parents=True)
    (results / "plots" / "a.png").write_bytes(PNG)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(f"api_key: {SECRET}\n")
    outside = tmp_path / "outside.txt"
    outside.write_text(SECRET)
    (results / "plots" / "out.png").symlink_to(outside)
    return results


def test_a_page_embeds_only_the_figures_its_rule_declares(workdir):
    """The report's reproduction: images an LLM (or an unescaped probe text) links to files
    of the machine, up the tree, through a symlink and on the network."""
    doc = workdir / "evaluation-M.md"
    refused = ["/proc/self/environ", "/etc/hostname", "../../config/config.yaml", "plots/out.png",
               "https://example.org/x.png", "http://example.org/x.png", "//example.org/x.png",
               "data:image/png;base64," + base64.b64encode(PNG).decode(), "plots/../plots/missing.png"]
    doc.write_text("# M\n\n" + "\n\n".join(f"![e{i}]({src})" for i, src in enumerate(refused))
                   + "\n\n| figure |\n|---|\n| ![t](/etc/hostname) |\n\n[![n](/etc/hostname)](https://example.org)\n\n"
                   "![r][ref]\n\n[ref]: ../../config/config.yaml\n\n## Figures\n\n![a](plots/a.png)\n", encoding="utf-8")
    page = render_page(doc, "t", figures=[workdir / "plots" / "a.png"])
    # One image, the declared figure, embedded; every other one named as text, nothing read.
    assert re.findall(r"<img [^>]*>", page) == [f'<img src="data:image/png;base64,{base64.b64encode(PNG).decode()}" alt="a" />']
    assert data_uris(page) == [PNG]
    assert SECRET not in page
    text = html.unescape(page)
    for i, src in enumerate(refused):
        assert f"[image “e{i}” not shown: {src[:79]}" in text
    assert "[image “r” not shown: ../../config/config.yaml is not one of this evaluation's figures]" in text
    assert not re.search(r'src="(?!data:image/png)', page)


def test_a_page_reads_nothing_it_refuses(workdir, monkeypatch):
    """Not even to check it: the refused paths are never opened."""
    doc = workdir / "evaluation-M.md"
    doc.write_text("![e](/proc/self/environ) ![c](../../config/config.yaml) ![a](plots/a.png)\n", encoding="utf-8")
    opened = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(str(self)) or real(self))
    render_page(doc, "t", figures=[str(workdir / "plots" / "a.png")])
    assert opened == [str(workdir / "plots" / "a.png")]


def test_a_declared_figure_that_is_missing_is_a_clear_error(workdir):
    doc = workdir / "evaluation-M.md"
    doc.write_text("![a](plots/gone.png)\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"evaluation-M\.md: the figure 'plots/gone\.png' it links does not exist"):
        render_page(doc, "t", figures=[workdir / "plots" / "gone.png"])


def test_links_lead_only_to_the_web_or_within_the_page(workdir):
    doc = workdir / "evaluation-M.md"
    doc.write_text(
        "[j](javascript:alert(1)) [J](JaVaScRiPt:alert(1)) [f](file:///etc/passwd) <file:///etc/passwd> "
        "[d](data:text/html;base64,PHNjcmlwdD4=) [p](data:image/png;base64,AAAA) [v](vbscript:x) "
        "[r](../../config/config.yaml) [s](/etc/hostname)\n\n"
        "[w](https://example.org/a) <http://example.org/b> [m](mailto:a@example.org) [h](#summary)\n", encoding="utf-8")
    page = render_page(doc, "t", figures=[])
    assert re.findall(r'href="([^"]*)"', page) == ["https://example.org/a", "http://example.org/b", "mailto:a@example.org",
                                                   "#summary"]
    text = html.unescape(page)
    # markdown-it itself leaves javascript:, vbscript:, file: and data: but images as text; the rest is the page's.
    assert "[f](file:///etc/passwd)" in text and "<file:///etc/passwd>" in text
    assert "p (data:image/png;base64,AAAA)" in text and "r (../../config/config.yaml)" in text and "s (/etc/hostname)" in text


def test_every_committed_page_is_rendered_byte_for_byte_as_before():
    """The pipeline's own figures embed as they always did: each committed page, made by the
    renderer before pages refused undeclared images, comes out the same from its evaluation
    and the experiment's plots."""
    pages = sorted((REPO / "results").glob("*/html/evaluation-*.html"))
    assert len(pages) >= 16
    for page in pages:
        exp = page.parent.parent
        figures = sorted(exp.glob("plots/**/*.png"))
        rendered = render_page(exp / f"{page.stem}.md", f"Experiment {exp.name} · {page.stem}", figures)
        assert rendered.encode("utf-8") == page.read_bytes(), page


# ---------------------------------------------------------------- the offline analyst

# What a user (a relation, a probe set file, a pair) or a model (its tokens, its config's
# architecture) may write, with every markdown construct that could embed, link or restructure.
HOSTILE = ("![e](/proc/self/environ) ![c](../../config/config.yaml) [l](javascript:alert(1)) <http://example.org> "
           "<img src=x> *em* __strong__ `code` ``two`` ~~del~~ &amp; \\ | cell # heading\n# line\n- item\n1. list\n---\n"
           "> quote")
BENIGN = "plain words of the user"
LINE_STARTS = ("- item", "+ item", "1. list", "2) list", "# heading", "> quote", "=", "---", "    indented")


def _poisoned(value, text: str, seen=None):
    """``value`` (facts) with every user- or model-written string replaced by ``text``: probe
    and pair texts, relations, styles, warnings, tokens, architectures; ids and model keys
    keep what makes them unique and gain the markup a key can hold ("_x_" after "-")."""
    if isinstance(value, list):
        return [_poisoned(v, text) for v in value]
    if isinstance(value, tuple):
        return tuple(_poisoned(v, text) for v in value)
    if isinstance(value, dict):
        return {k: _poisoned(v, text) for k, v in value.items()}
    if not dataclasses.is_dataclass(value):
        return value
    changes = {}
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        if field.name in ("model", "id", "reverse_of", "probe") and isinstance(item, str):
            changes[field.name] = item + ("-_x_" if text == HOSTILE else "-x")
        elif field.name == "style":
            changes[field.name] = item if item == "plain" else text
        elif field.name == "relation":  # two relations, so the statistics name each
            changes[field.name] = f"{text} {len(value.id) % 2}"
        elif field.name in ("prompt", "answer", "architecture", "clean_prompt", "corrupted_prompt", "clean_answer",
                            "corrupted_answer", "final_top1", "token", "text") and isinstance(item, str):
            changes[field.name] = text
        elif field.name in ("tokens", "corrupted_tokens", "warnings") and all(isinstance(t, str) for t in item):
            changes[field.name] = [text for _ in item] or ([text] if field.name == "warnings" else [])
        elif field.name == "middle_tokens":
            changes[field.name] = [(text + str(i), n) for i, (_, n) in enumerate(item)]
        elif field.name == "trajectory":
            changes[field.name] = [{**step, "top1": text} for step in item]
        elif field.name == "skipped":
            changes[field.name] = [(pid + "-x", text) for pid, _ in item] or [("p-_x_", text)]
        else:
            changes[field.name] = _poisoned(item, text)
    poisoned = dataclasses.replace(value, **changes)
    if type(value).__module__ == "workflow.experiments.exp001.analysis" and type(value).__name__ == "ModelFacts":
        from workflow.experiments.exp001.analysis import probe_statistics

        poisoned.statistics = probe_statistics(poisoned)
    return poisoned


def _facts(exp: str, model: str):
    paths = {"summary": str(REPO / "results" / exp / f"output-{model}.json"),
             "records": str(REPO / "results" / exp / f"output-{model}-records.csv")}
    if exp == "002":
        paths["lens_summary"] = str(REPO / "results" / "001" / f"output-{model}.json")
    return experiment(exp).model_facts(**paths)


def _documents(exp: str, text: str) -> dict[str, str]:
    """The offline analyst's three evaluations of ``exp`` on the committed models' facts, every
    user- and model-written string in them ``text``."""
    found = experiment(exp)
    facts = [_poisoned(_facts(exp, m), text) for m in MODELS]
    docs = {}
    for stage, arg in (("single-model", facts[0]), ("cross-model", facts), ("meta", facts)):
        headings = load_template(REPO / "prompts" / exp / f"{stage}-evaluation.md").headings
        docs[stage] = write(stage, "Title", headings, arg, found.sections[stage])
    return docs


def _structure(page: str) -> list[str]:
    return re.findall(r"</?[a-z0-9]+", page)


@pytest.mark.parametrize("exp", ["001", "002", "003", "004", "005"])
def test_the_offline_analysts_text_forms_no_markup(exp, tmp_path):
    """A relation "![e](/proc/self/environ)" (the report's reproduction), and every other
    string a user or a model writes, is shown as text: each page has the very elements it has
    with plain words in their place, no image, no link, and says what was written."""
    pages = {}
    for name, text in (("hostile", HOSTILE), ("benign", BENIGN)):
        for stage, doc in _documents(exp, text).items():
            path = tmp_path / name / f"evaluation-{stage}.md"
            path.parent.mkdir(exist_ok=True)
            path.write_text(doc, encoding="utf-8")
            pages[name, stage] = render_page(path, "t", figures=[])
    for stage in ("single-model", "cross-model", "meta"):
        hostile = pages["hostile", stage]
        assert _structure(hostile) == _structure(pages["benign", stage]), stage
        assert "<img" not in hostile and "<a " not in hostile and "not shown" not in hostile
    written = "".join(html.unescape(pages["hostile", stage]) for stage in ("single-model", "cross-model"))
    # 005's evaluations quote no free text (its tasks are the schema's enums, its words are not
    # quoted); its model keys, which carry markup here, are in the structure compared above.
    assert ("![e](/proc/self/environ)" in written) == (exp != "005")


def test_escaped_text_is_itself_wherever_it_stands():
    """At the start of a line, in a list item, in a table cell, after other text: rendered, the
    escaped text reads as written (a line break as a space), and is one paragraph's text."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    samples = [HOSTILE, *LINE_STARTS, "a_b_c", "\\*", "&#42;", "1.5 nats", "![x](/etc/hostname)", "x\r\ny"]
    for sample in samples:
        shown = re.sub(r"[\r\n]", " ", sample)
        cases = {
            f"{escaped(sample)}\n": "<p>{}</p>",
            f"text {escaped(sample)}\n": "<p>text {}</p>",
            f"- {escaped(sample)}\n": "<ul>\n<li>{}</li>\n</ul>",
        }
        for source, frame in cases.items():
            assert parser.render(source) == frame.format(html.escape(shown, quote=False).strip()) + "\n", repr(source)
        cell = parser.render(table(["h"], [[escaped(sample)]]))
        assert re.search(r"<td>(.*)</td>", cell).group(1) == html.escape(shown, quote=False).strip(), repr(sample)


def test_code_spans_hold_any_text():
    parser = MarkdownIt("commonmark", {"html": False})
    for sample in ["a", "`", "a`b", "``", "`x`", "x``y", "![x](/etc/hostname)`![y](/etc/hostname)`", "a\nb"]:
        rendered = parser.render(f"t {code(sample)} u\n")
        assert rendered == f"<p>t <code>{html.escape(sample.replace(chr(10), ' '), quote=False)}</code> u</p>\n", sample
    assert tok(" Berlin") == "` Berlin`" and tok("a\nb`") == "`` a\\nb` ``"


# ---------------------------------------------------------------- the figure check


def test_a_number_in_a_relation_is_no_evidence():
    """Item 7: "founded_in 1887" is the user's relation, written raw in the digest and escaped
    in the offline analyst's document; 1887 is not a figure of the data."""
    facts = _facts("001", MODELS[0])
    probes = [dataclasses.replace(p, relation="founded_in 1887" if i % 2 else "died_in *1955*")
              for i, p in enumerate(facts.probes)]
    facts = dataclasses.replace(facts, probes=probes)
    from workflow.experiments.exp001.analysis import probe_statistics

    facts.statistics = probe_statistics(facts)
    found = experiment("001")
    digest = found.digest(facts, 100_000)
    headings = load_template(REPO / "prompts" / "001" / "single-model-evaluation.md").headings
    offline = write("single-model", "t", headings, facts, found.sections["single-model"])
    assert "relation founded_in 1887" in digest and "relation founded\\_in 1887" in offline
    evidence = fig.Evidence(digest, offline, user=fig.user_texts(facts))
    for invented in ("1887", "1955"):
        assert not evidence.supports(fig.extract(f"it is {invented}")[0]), invented
    assert evidence.supports(fig.extract(f"{facts.n_layers} layers")[0])  # the data's own figures still are


def test_a_short_user_text_blanks_no_part_of_a_number():
    """A probe answering " 1" is not in "15.3": blanking it must not leave "5.3" as evidence."""
    evidence = fig.Evidence("entropy 15.3 at layer 1", user=[" 1"])
    assert not evidence.supports(fig.extract("5.3")[0])
    assert evidence.supports(fig.extract("15.3")[0])


def test_numbers_in_code_spans_of_any_fence_are_not_figures():
    assert [f.text for f in fig.extract("a ``x`1.5`` b `2.5` c 3.5")] == ["3.5"]


def test_the_pipeline_embeds_no_file_a_probe_names(tiny_dirs, tmp_path, monkeypatch):
    """End to end, as reported: probes whose relations link /proc/self/environ, the config and
    /etc/hostname, with an API key in the environment; the pages the rule writes (one model's,
    and the method page, which declares no figure) hold their own figures only."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    probes = [dict(p) for p in PROBES]
    for probe, relation in zip(probes, ("![e](/proc/self/environ)", "![c](../../config/config.yaml)", "![h](/etc/hostname)")):
        probe["relation"] = relation
    workdir = finished_run(tmp_path / "wd", tiny_config(tiny_dirs, probes=probes),
                           "results/001/html/evaluation-tiny-llama.html", "results/001/html/evaluation-meta.html")
    results = workdir / "results" / "001"
    assert "relation !\\[e\\](/proc/self/environ)" in (results / "evaluation-tiny-llama.md").read_text()
    page = (results / "html" / "evaluation-tiny-llama.html").read_text(encoding="utf-8")
    figures = sorted((results / "plots" / "tiny-llama").glob("*.png"))
    assert sorted(data_uris(page)) == sorted(f.read_bytes() for f in figures)
    assert "relation ![e](/proc/self/environ)" in html.unescape(page)
    meta = (results / "html" / "evaluation-meta.html").read_text(encoding="utf-8")
    assert data_uris(meta) == [] and "<img" not in meta
    for text in (page, meta):
        assert SECRET not in text


def test_the_footer_writes_the_evaluator_settings_as_text():
    """The footer names the provider's settings (a model name from the config): as text, so a
    model named like an image or link forms none."""
    from workflow.evaluation.run import footer
    from workflow.evaluation.templates import load_template

    class Provider:
        def describe(self):
            return {"provider": "openai", "model": "![k](/etc/hostname) [x](javascript:alert(1)) *em*"}

    template = load_template(str(REPO / "prompts" / "001" / "meta-evaluation.md"))
    html = MarkdownIt("commonmark", {"html": False}).render(footer(template, "prompt", Provider()))
    assert "<img" not in html and "<a " not in html and "<em>" not in html
    assert "![k](/etc/hostname)" in html

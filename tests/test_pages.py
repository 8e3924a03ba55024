"""Evaluations as self-contained HTML pages: markdown rendered, figures embedded, deterministic."""

import base64
import re

import pytest

from workflow.base.errors import UserError
from workflow.report.pages import render_page, write_page

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
def evaluation(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(PNG)
    doc = tmp_path / "evaluation-x.md"
    doc.write_text(
        "# Title\n\n## Table\n\n| probe | answer |\n|---|---|\n| `capital` | <b>Berlin</b> |\n\n"
        "## Figures\n\n![a](plots/a.png)\n",
        encoding="utf-8",
    )
    return doc


def test_markdown_is_rendered_and_figures_are_embedded(evaluation):
    page = render_page(evaluation, "Evaluation <x>", figures=[evaluation.parent / "plots" / "a.png"])
    assert "<title>Evaluation &lt;x&gt;</title>" in page
    assert "<h2>Table</h2>" in page and "<table>" in page and "<code>capital</code>" in page
    # Raw HTML in the evaluator's text is shown as text, never run.
    assert "<b>Berlin</b>" not in page and "&lt;b&gt;Berlin&lt;/b&gt;" in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources == ["data:image/png;base64," + base64.b64encode(PNG).decode()]
    assert "plots/a.png" not in page  # nothing left to resolve: the page stands alone


def test_same_inputs_same_bytes(evaluation, tmp_path):
    write_page(evaluation, tmp_path / "one.html", "t", figures=[tmp_path / "plots" / "a.png"])
    write_page(evaluation, tmp_path / "two.html", "t", figures=[tmp_path / "plots" / "a.png"])
    assert (tmp_path / "one.html").read_bytes() == (tmp_path / "two.html").read_bytes()


def test_missing_figure_is_a_clear_error_and_writes_nothing(evaluation, tmp_path):
    (tmp_path / "plots" / "a.png").unlink()
    with pytest.raises(UserError, match=r"evaluation-x\.md: the figure 'plots/a\.png'"):
        write_page(evaluation, tmp_path / "page.html", "t", figures=[tmp_path / "plots" / "a.png"])
    assert not (tmp_path / "page.html").exists()

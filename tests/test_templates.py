"""Prompt templates: front matter, rendering and the heading contract."""

import pytest

from workflow.base.errors import UserError
from workflow.evaluation.templates import heading_problems, load_template
from conftest import REPO

from workflow.evaluation.experiment import STAGES, experiment, registered

TEMPLATES = [(exp, stage) for exp in registered() for stage in STAGES]


@pytest.mark.parametrize("exp, stage", TEMPLATES)
def test_shipped_templates_declare_headings_the_offline_analyst_writes(exp, stage):
    template = load_template(REPO / "prompts" / exp / f"{stage}-evaluation.md")
    assert template.headings[0] == "Summary"
    assert len(template.headings) >= 4
    assert template.system
    sections = experiment(exp).sections[stage]
    assert [h for h in template.headings if h.casefold() not in sections] == []


def test_render_fills_variables_and_headings(tmp_path):
    path = tmp_path / "t.md"
    path.write_text("---\nheadings: [One, Two]\n---\nModel ${model} costs $$5.\n${headings}\n")
    text = load_template(path).render({"model": "m"})
    assert text == "Model m costs $5.\n## One\n## Two\n"


def test_unknown_variable_names_the_template_and_variable(tmp_path):
    path = tmp_path / "t.md"
    path.write_text("---\nheadings: [One]\n---\n${nope}\n")
    with pytest.raises(UserError, match=r"t\.md: unknown variable \$\{nope\}"):
        load_template(path).render({"model": "m"})


@pytest.mark.parametrize(
    "text, message",
    [
        ("no front matter", "YAML front matter"),
        ("---\nheadings: []\n---\nbody", "headings"),
        ("---\nheadings: [a\n---\nbody", "not valid YAML"),
    ],
)
def test_bad_templates_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.md"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_template(path)


def test_heading_contract():
    required = ("Summary", "Details", "Caveats")
    good = "# Title\n\n## Summary\ntext\n## Details\n### sub\n## Caveats\n"
    assert heading_problems(good, required) == []
    assert heading_problems("## summary\n## DETAILS\n## Caveats ##\n", required) == []
    assert heading_problems("## Summary\n## Caveats\n", required) == ["heading '## Details' is missing"]
    assert heading_problems("## Summary\n## Caveats\n## Details\n", required) == ["heading '## Caveats' is out of order"]
    assert heading_problems("Summary\nDetails\n", required)[0] == "heading '## Summary' is missing"

"""What a reader's first screen shows, in headless Chromium at 1400x1000 (tests/browser.py):
an evaluation page and the explorer page of each kind (lens records, patching, components),
made by the current code from the committed results. Each screenshot is the whole screen
and not blank, nothing on it overflows sideways (cut off or scrolled), and what must be on
it is there. The report's first screen is checked on the tiny run (tests/test_pipeline.py)."""

from __future__ import annotations

import pytest

from browser import console_errors, first_screen, on_first_screen, overflowing
from conftest import REPO
from workflow.report.numbering import BLOCK_LABEL, LAYER_LABEL

RESULTS = REPO / "results"
MODEL = "gemma-3-270m"


def test_the_evaluation_pages_first_screen(browser, tmp_path):
    from workflow.report.pages import write_page

    page = tmp_path / "evaluation-cross-model.html"
    write_page(RESULTS / "001" / "evaluation-cross-model.md", page, "Experiment 001 · evaluation-cross-model",
               [RESULTS / "001" / "plots" / "cross-model-trajectories.png"])
    browser.get(page.as_uri())
    first_screen(browser, tmp_path / "evaluation.png")
    assert on_first_screen(browser, browser.find_element("css selector", "h1"))
    # The page opens with its text (the answer first), not with a figure or a blank screen.
    paragraph = browser.find_element("css selector", "h1 ~ p")
    assert on_first_screen(browser, paragraph) and len(paragraph.text) > 80
    assert overflowing(browser) == []
    for image in browser.find_elements("css selector", "img"):  # figures scaled to the page's width
        assert browser.execute_script("return arguments[0].getBoundingClientRect().right", image) <= 1400
    assert console_errors(browser) == []


def explorer_page(experiment: str, model: str) -> str:
    """The explorer page of ``experiment`` for ``model``, as the rule writes it, of its first two
    probes or pairs (all of them make no other first screen, and take seconds longer)."""
    import json

    from workflow.evaluation.experiment import experiment as registered
    from workflow.report.explorer import render

    summary_path, records_path = RESULTS / experiment / f"output-{model}.json", RESULTS / experiment / f"output-{model}-records.csv"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    page = registered(experiment).explorer
    records = page.read(str(records_path), str(summary_path), summary)
    if experiment == "001":
        return render(page.data(summary, records, ["capital-germany", "capital-france"]))
    if experiment == "005":
        return render(page.data(summary, records, None))
    summary = {**summary, "pairs": summary["pairs"][:2]}
    return render(page.data(summary, records[records["pair"].isin([p["id"] for p in summary["pairs"]])], None))


@pytest.mark.parametrize("experiment, model, unit", [("001", MODEL, LAYER_LABEL), ("002", "smollm2-135m-instruct", LAYER_LABEL),
                                                     ("004", MODEL, BLOCK_LABEL), ("005", MODEL, LAYER_LABEL)])
def test_the_explorers_first_screen(browser, tmp_path, experiment, model, unit):
    """One page of each kind: the grid, the chosen cell's details and which numbering the rows
    use, all on the first screen, nothing cut off."""
    page = tmp_path / f"explorer-{experiment}.html"
    page.write_text(explorer_page(experiment, model), encoding="utf-8")
    browser.get(page.as_uri())
    grid = browser.find_element("css selector", "#grid")
    first_screen(browser, tmp_path / f"explorer-{experiment}.png")
    assert browser.find_element("css selector", "#unit").text == f"Rows: {unit}."
    for element in (browser.find_element("css selector", "#unit"), browser.find_element("css selector", "#grid th.corner"),
                    browser.find_element("css selector", "#details h2")):
        assert on_first_screen(browser, element), element.text
    assert browser.execute_script("return arguments[0].getBoundingClientRect().top", grid) < 1000 / 2
    word = unit.split(" ")[0]
    assert browser.find_element("css selector", "#grid th.corner").text == f"{word} \\ {'concept' if experiment == '005' else 'position'}"
    assert browser.find_element("css selector", "#details h2").text.startswith(f"{word} ")
    assert overflowing(browser) == []
    assert console_errors(browser) == []

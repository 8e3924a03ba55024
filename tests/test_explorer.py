"""The interactive explorer (workflow/report/explorer.py): the page's data are the records, and in a
real headless browser the page loads without console errors, a click or a hover shows that
cell's top-k, and every number it shows equals the records.

The browser is Debian's Chromium with its ChromeDriver, driven by selenium (tests/browser.py);
`.ci/run` installs both packages. Without them the browser tests are skipped and say why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser import console_errors
from conftest import REPO
from workflow.experiments.exp002.records import read_patching_records
from workflow.report.explorer import lens_page_data, write_explorer
from workflow.lens.records import read_records
from workflow.report.numbering import BLOCK_LABEL, LAYER_LABEL

MODEL = "gemma-3-270m"


def committed(experiment: str, model: str = MODEL) -> tuple[Path, Path]:
    results = REPO / "results" / experiment
    return results / f"output-{model}.json", results / f"output-{model}-records.csv"


def test_the_page_data_are_the_records():
    summary_path, records_path = committed("001")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    records = read_records(records_path)
    data = lens_page_data("001", summary, records, ["capital-germany", "capital-france"])
    assert [p["id"] for p in data["probes"]] == ["capital-germany", "capital-france"]
    assert (data["unit"], data["unit_label"]) == ("layer", LAYER_LABEL)  # rows are 001's layers
    assert data["lenses"] == ["logit", "tuned"] and data["probes_total"] == len(summary["probes"])
    tokens = data["tokens"]
    checked = 0
    for probe in data["probes"]:
        for lens in data["lenses"]:
            rows = records[(records["probe"] == probe["id"]) & (records["lens"] == lens)]
            assert len(rows) == len(probe["layers"]) * len(probe["positions"])
            for row in rows.itertuples():
                cell = probe["cells"][lens][probe["layers"].index(row.layer)][probe["positions"].index(row.position)]
                assert tokens[cell[0]] == row.top1_token
                assert cell[1:6] == [row.top1_prob, row.entropy, row.answer_prob, row.answer_rank, row.kl_to_final]
                assert [tokens[t] for t in cell[6]] == row.topk_tokens and cell[7] == row.topk_probs
                assert tokens[probe["inputs"][probe["positions"].index(row.position)]] == row.input_token
                checked += 1
    assert checked == 2 * 2 * 19 * 6  # two probes, two lenses, 19 layers, six positions


def test_a_token_cannot_end_the_pages_script(tmp_path):
    """Tokens are arbitrary text: one that reads "</script>" must stay inside the data."""
    summary_path, records_path = committed("001")
    records = read_records(records_path)
    records.loc[0, "top1_token"] = "</script><script>alert(1)</script>"
    records.loc[0, "topk_tokens"][0] = "</script><script>alert(1)</script>"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    from workflow.report.explorer import render

    page = render(lens_page_data("001", summary, records, ["capital-germany"]))
    assert "</script><script>alert" not in page and page.count("</script>") == 2


# ---- in a real browser (the fixture ``browser``: tests/browser.py) ------------------------------


def open_page(browser, path: Path):
    browser.get(path.as_uri())
    browser.find_element("css selector", "#grid")  # drawn by the script
    return browser


def shown_cell(browser) -> dict:
    """What the details panel shows: its heading, the top-k rows and the named facts."""
    details = browser.find_element("css selector", "#details")
    return {
        "heading": details.find_element("css selector", "h2").text,
        "topk": [(td.get_attribute("data-token"), float(p.get_attribute("data-value")), p.text)
                 for td, p in zip(details.find_elements("css selector", "#topk td.token"),
                                  details.find_elements("css selector", "#topk td.prob"))],
        "facts": {td.get_attribute("data-key"): float(td.get_attribute("data-value"))
                  for td in details.find_elements("css selector", "td[data-key][data-value]")},
    }


def test_the_lens_explorer_shows_the_records_of_the_cell_clicked(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    summary_path, records_path = committed("001")
    page = tmp_path / "explorer-001.html"
    write_explorer("001", summary_path, records_path, page, ["capital-germany", "capital-france", "capital-japan"])
    records = read_records(records_path)
    open_page(browser, page)
    assert console_errors(browser) == []

    def record(probe, lens, layer, position):
        rows = records[(records["probe"] == probe) & (records["lens"] == lens) & (records["layer"] == layer) & (records["position"] == position)]
        assert len(rows) == 1
        return rows.iloc[0]

    def check(shown, row):
        assert [t for t, _, _ in shown["topk"]] == row["topk_tokens"]
        assert [p for _, p, _ in shown["topk"]] == row["topk_probs"]
        # the text a reader sees: four significant digits of the same values
        assert [float(text) for _, _, text in shown["topk"]] == pytest.approx(row["topk_probs"], rel=5e-4, abs=1e-300)
        assert shown["facts"] == {"entropy": row["entropy"], "answer_prob": row["answer_prob"],
                                  "answer_rank": row["answer_rank"], "kl_to_final": row["kl_to_final"]}

    # The page opens on the first probe through the logit lens, the last layer's last position chosen.
    opened = shown_cell(browser)
    assert opened["heading"] == 'layer 18 · position 5 (" is")'
    check(opened, record("capital-germany", "logit", 18, 5))

    # Another probe, the tuned lens, a click on a mid-stack cell.
    Select(browser.find_element("css selector", "#item")).select_by_visible_text("capital-france")
    browser.find_element("css selector", ".lens-toggle button[data-lens='tuned']").click()
    cell = browser.find_element("css selector", "#grid td[data-layer='12'][data-position='4']")
    row = record("capital-france", "tuned", 12, 4)
    shown = "".join({" ": "␣", "\n": "\\n"}.get(c, c) for c in row["top1_token"])
    assert cell.text == (shown if len(shown) <= 10 else shown[:9] + "…")
    cell.click()
    clicked = shown_cell(browser)
    assert clicked["heading"] == 'layer 12 · position 4 (" France")'
    check(clicked, row)
    assert "pinned" in cell.get_attribute("class")

    # The answer's probability and rank by layer at that position, for both lenses.
    for chart, column in (("answer_prob", "answer_prob"), ("answer_rank", "answer_rank")):
        for lens in ("logit", "tuned"):
            points = browser.find_elements("css selector", f"svg[data-chart='{chart}'] circle[data-series='{lens} lens']")
            shown = {int(p.get_attribute("data-layer")): float(p.get_attribute("data-value")) for p in points}
            rows = records[(records["probe"] == "capital-france") & (records["lens"] == lens) & (records["position"] == 4)]
            assert shown == dict(zip(rows["layer"].astype(int), rows[column].astype(float)))

    # While a cell is kept, hovering another changes nothing; arrow keys move the kept cell.
    ActionChains(browser).move_to_element(browser.find_element("css selector", "#grid td[data-layer='3'][data-position='1']")).perform()
    assert shown_cell(browser)["heading"] == clicked["heading"]
    browser.find_element("css selector", "body").send_keys(Keys.ARROW_UP)
    check(shown_cell(browser), record("capital-france", "tuned", 13, 4))
    # Clicking the kept cell lets go; then hovering shows the cell under the pointer.
    browser.find_element("css selector", "#grid td[data-layer='13'][data-position='4']").click()
    ActionChains(browser).move_to_element(browser.find_element("css selector", "#grid td[data-layer='3'][data-position='1']")).perform()
    check(shown_cell(browser), record("capital-france", "tuned", 3, 1))
    # Back to the logit lens: the same cell through the other lens.
    browser.find_element("css selector", ".lens-toggle button[data-lens='logit']").click()
    ActionChains(browser).move_to_element(browser.find_element("css selector", "#grid td[data-layer='3'][data-position='1']")).perform()
    check(shown_cell(browser), record("capital-france", "logit", 3, 1))
    assert console_errors(browser) == []
    # What was shown is drawn: a screenshot of the page is not one colour.
    shot = tmp_path / "explorer.png"
    browser.save_screenshot(str(shot))
    import matplotlib.image

    image = matplotlib.image.imread(shot)
    assert image.shape[0] > 500 and len({tuple(p) for p in image[::40, ::40].reshape(-1, image.shape[2])}) > 20


def test_the_patching_explorer_shows_the_records_of_the_cell_clicked(browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    summary_path, records_path = committed("002", "smollm2-135m-instruct")
    page = tmp_path / "explorer-002.html"
    write_explorer("002", summary_path, records_path, page)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    records = read_patching_records(str(records_path), summary)
    open_page(browser, page)
    assert console_errors(browser) == []
    Select(browser.find_element("css selector", "#item")).select_by_visible_text("capital-germany-reverse")
    Select(browser.find_element("css selector", "#sweep")).select_by_visible_text("noise · prompt")
    browser.find_element("css selector", "#grid td[data-layer='20'][data-position='2']").click()
    row = records[(records["pair"] == "capital-germany-reverse") & (records["direction"] == "noise") & (records["corruption"] == "prompt")
                  & (records["layer"] == 20) & (records["position"] == 2)].iloc[0]
    facts = shown_cell(browser)["facts"]
    assert facts == {"recovered": row["recovered"], "logit_diff": row["logit_diff"]}
    points = browser.find_elements("css selector", "svg[data-chart='recovered'] circle")
    rows = records[(records["pair"] == "capital-germany-reverse") & (records["direction"] == "noise")
                   & (records["corruption"] == "prompt") & (records["position"] == 2)]
    assert {int(p.get_attribute("data-layer")): float(p.get_attribute("data-value")) for p in points} == dict(
        zip(rows["layer"].astype(int), rows["recovered"].astype(float)))
    assert console_errors(browser) == []


def component_records(model: str = MODEL):
    from workflow.experiments.exp004.records import read_component_records

    summary_path, records_path = committed("004", model)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return summary_path, records_path, summary, read_component_records(str(records_path), summary)


def test_the_component_page_data_are_the_records():
    from workflow.experiments.exp004.explorer import components_page_data

    _, _, summary, records = component_records()
    data = components_page_data(summary, records)
    assert [p["id"] for p in data["pairs"]] == [p["id"] for p in summary["pairs"]] and data["heads_exposed"]
    assert (data["unit"], data["unit_label"]) == ("block", BLOCK_LABEL)  # the records' `layer` is the block
    measures = ["exact", "atp", "grad_drop", "dla_answer", "dla_competitor", "dla_corrupted_answer"]
    checked = 0
    for pair, described in zip(data["pairs"], summary["pairs"]):
        assert [v["component"] for v in pair["sweeps"]] == ["attention", "mlp", "head0", "head1", "head2", "head3"]
        assert pair["targets"]["answer"]["post_prob"] == described["targets"]["answer"]["post_prob"]
        for view in pair["sweeps"]:
            rows = records[(records["pair"] == pair["id"]) & (records["component"] == view["component"])]
            assert len(rows) == len(view["layers"]) * len(view["positions"]) == 18 * len(described["clean_tokens"])
            for row in rows.itertuples():
                i, j = view["layers"].index(row.layer), view["positions"].index(row.position)
                expected = [getattr(row, m) for m in measures]
                assert view["cells"][i][j] == [None if v != v else v for v in expected]  # NaN as null
                assert data["tokens"][view["tokens"][j]] == row.token
                checked += 1
    # every record but the attention bias's (direct logit attribution only, in the figures)
    assert checked == int((records["component"] != "attention_bias").sum()) > 0


def test_the_component_explorer_shows_the_records_of_the_cell_clicked(browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    summary_path, records_path, summary, records = component_records()
    page = tmp_path / "explorer-004.html"
    write_explorer("004", summary_path, records_path, page)
    open_page(browser, page)
    assert console_errors(browser) == []
    Select(browser.find_element("css selector", "#item")).select_by_visible_text("capital-france")
    Select(browser.find_element("css selector", "#sweep")).select_by_visible_text("head 2")
    last = len(summary["pairs"][1]["clean_tokens"]) - 1
    of_pair = records[(records["pair"] == "capital-france") & (records["component"] == "head2")]
    for position, dla in ((last, True), (4, False)):
        browser.find_element("css selector", f"#grid td[data-layer='12'][data-position='{position}']").click()
        row = of_pair[(of_pair["layer"] == 12) & (of_pair["position"] == position)].iloc[0]
        expected = {"exact": row["exact"], "atp": row["atp"], "grad_drop": row["grad_drop"]}
        if dla:  # direct logit attribution is read at the last position only
            expected.update({k: row[k] for k in ("dla_answer", "dla_competitor", "dla_corrupted_answer")})
        assert shown_cell(browser)["facts"] == expected
        # the cell shows the exact value, rounded; the AtP toggle shows the estimate
        cell = browser.find_element("css selector", f"#grid td[data-layer='12'][data-position='{position}']")
        assert cell.text == f"{row['exact']:.2f}"
        assert shown_cell(browser)["heading"] == f'block 12 · position {position} ({json.dumps(summary["pairs"][1]["clean_tokens"][position])})'
    points = browser.find_elements("css selector", "svg[data-chart='recovered'] circle[data-series='exact']")
    at = of_pair[of_pair["position"] == 4]
    assert {int(p.get_attribute("data-layer")): float(p.get_attribute("data-value")) for p in points} == dict(
        zip(at["layer"].astype(int), at["exact"].astype(float)))
    lens = browser.find_elements("css selector", "svg[data-chart='lens'] circle[data-series='after MLP']")
    assert [float(p.get_attribute("data-value")) for p in lens] == summary["pairs"][1]["targets"]["answer"]["post_prob"]
    browser.find_element("css selector", "button[data-measure='atp']").click()
    row = of_pair[(of_pair["layer"] == 12) & (of_pair["position"] == 4)].iloc[0]
    assert browser.find_element("css selector", "#grid td[data-layer='12'][data-position='4']").text == f"{row['atp']:.2f}"
    assert console_errors(browser) == []


def word_records(model: str = MODEL):
    from workflow.experiments.exp005.records import read_word_records

    summary_path, records_path = committed("005", model)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return summary_path, records_path, summary, read_word_records(str(records_path), summary)


def test_the_word_page_data_are_the_records():
    from workflow.experiments.exp005.explorer import CELL, words_page_data

    _, _, summary, records = word_records()
    data = words_page_data(summary, records)
    assert [t["id"] for t in data["tasks"]] == [t["id"] for t in summary["tasks"]]
    assert data["lenses"] == ["logit", "tuned", "patchscope"] and data["unit"] == "layer"
    checked = 0
    for task, described in zip(data["tasks"], summary["tasks"]):
        concepts = [p["concept"] for p in described["prompts"]]
        assert [data["tokens"][t] for t in task["inputs"]] == concepts
        assert [[None if t is None else data["tokens"][t] for t in words] for words in task["words"]] == [
            [p["words"].get(role) for role in ("target", "english", "source")] for p in described["prompts"]]
        for row in records[records["task"] == task["id"]].itertuples():
            cell = task["cells"][row.lens][task["layers"].index(row.layer)][concepts.index(row.concept)]
            assert data["tokens"][cell[0]] == row.top1_token
            assert cell[1:] == [None if getattr(row, c) != getattr(row, c) else getattr(row, c) for c in CELL[1:]]  # NaN as null
            checked += 1
    assert checked == len(records) > 0


def test_the_word_explorer_shows_the_records_of_the_cell_clicked(browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    summary_path, records_path, summary, records = word_records()
    page = tmp_path / "explorer-005.html"
    write_explorer("005", summary_path, records_path, page)
    open_page(browser, page)
    assert console_errors(browser) == []
    Select(browser.find_element("css selector", "#item")).select_by_visible_text("translation-de-fr")
    browser.find_element("css selector", "button[data-lens='patchscope']").click()
    task = next(t for t in summary["tasks"] if t["id"] == "translation-de-fr")
    concept = task["prompts"][2]
    browser.find_element("css selector", "#grid td[data-layer='14'][data-position='2']").click()
    row = records[(records["task"] == "translation-de-fr") & (records["lens"] == "patchscope") & (records["layer"] == 14)
                  & (records["concept"] == concept["concept"])].iloc[0]
    shown = shown_cell(browser)
    assert shown["heading"] == f'layer 14 · concept {json.dumps(concept["concept"])}'
    assert shown["facts"] == {k: row[k] for k in ("top1_prob", "target_prob", "target_rank", "english_prob", "english_rank",
                                                  "source_prob", "source_rank")}
    points = browser.find_elements("css selector", "svg[data-chart='word_prob'] circle")
    of_concept = records[(records["task"] == "translation-de-fr") & (records["lens"] == "patchscope")
                         & (records["concept"] == concept["concept"])]
    target = {int(p.get_attribute("data-layer")): float(p.get_attribute("data-value")) for p in points
              if p.get_attribute("data-series").startswith("target ")}
    assert target == dict(zip(of_concept["layer"].astype(int), of_concept["target_prob"].astype(float)))
    assert console_errors(browser) == []


def test_invisible_characters_are_shown_as_code_points(browser, tmp_path):
    """A no-break space or a zero-width space would make an empty-looking cell: shown as their
    code points, as the heatmaps show them."""
    from workflow.report.explorer import render

    summary_path, records_path = committed("001")
    records = read_records(records_path)
    for position, token in ((0, "\xa0A "), (1, "\u200b")):
        row = records.index[(records["probe"] == "capital-germany") & (records["lens"] == "logit") & (records["layer"] == 0)
                            & (records["position"] == position)][0]
        records.at[row, "top1_token"] = token
    page = tmp_path / "invisible.html"
    page.write_text(render(lens_page_data("001", json.loads(summary_path.read_text(encoding="utf-8")), records, ["capital-germany"])),
                    encoding="utf-8")
    open_page(browser, page)
    cells = [browser.find_element("css selector", f"#grid td[data-layer='0'][data-position='{p}']").text for p in (0, 1)]
    assert cells == ["\\u00a0A␣", "\\u200b"]
    assert console_errors(browser) == []

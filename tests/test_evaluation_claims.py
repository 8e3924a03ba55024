"""The offline analyst's evaluations of the committed results answer their experiment's question
first, and no claim in them is contradicted by the tables of the same document.

Each experiment's three evaluations are rendered from the committed records (results/NNN/,
the models of the default run) as the pipeline renders them. Then (a) the first paragraph under
the first heading must state the answer: layer (or block) numbers "of" the model's depth, with
the lenses (or methods) named; and (b) every claim the analyst makes is recomputed from the
tables of the same document (parsed from the markdown) with the rule the document states, and
must be the one written. The claims are phrased by fixed rules, so a claim is checked by
writing it again from the table's numbers: a sentence that its own table contradicts fails.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from statistics import median

import pytest

from pipeline import REPO
from workflow.evaluation.run import evaluate

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


# ---------------------------------------------------------------- rendering and reading


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def layers_text(layers: list[int], n_layers: int, noun: str = "probe") -> str:
    """How the analyst words a set of layers (workflow.evaluation.text.layers_text), written here
    again so that the test does not take the analyst's word for it."""
    counts = sorted(Counter(layers).items())
    if len(counts) == 1:
        ((layer, n),) = counts
        return f"layer {layer} of {n_layers}" + (f" (all {counted(n, noun)})" if n > 1 else "")
    if len(counts) <= 3:
        (first, n), *rest = counts
        others = [f"layer {layer} on {k}" for layer, k in rest]
        return f"layer {first} of {n_layers} on {counted(n, noun)}" + (" and " + others[0] if len(others) == 1 else f", {others[0]} and {others[1]}")
    return f"layers {counts[0][0]}–{counts[-1][0]} of {n_layers} (median {median(layers):g}, over {counted(len(layers), noun)})"


def _inputs(exp: str, model: str) -> dict[str, str]:
    paths = {"summary": f"results/{exp}/output-{model}.json", "records": f"results/{exp}/output-{model}-records.csv"}
    if exp == "002":
        paths["lens_summary"] = f"results/001/output-{model}.json"
    return {name: str(REPO / path) for name, path in paths.items()}


def render(exp: str, directory) -> dict[str, str]:
    """The offline analyst's evaluations of ``exp`` on the committed results: one per model (by
    model key), "cross-model" and "meta"."""
    inputs = [_inputs(exp, m) for m in MODELS]
    settings = {"provider": "offline"}
    docs, singles = {}, []
    for model, paths in zip(MODELS, inputs):
        out = directory / f"evaluation-{model}.md"
        docs[model] = evaluate("single-model", exp, [paths], str(REPO / f"prompts/{exp}/single-model-evaluation.md"), settings, str(out)).text
        singles.append(str(out))
    cross = directory / "evaluation-cross-model.md"
    docs["cross-model"] = evaluate("cross-model", exp, inputs, str(REPO / f"prompts/{exp}/cross-model-evaluation.md"), settings,
                                   str(cross), evaluations=singles).text
    docs["meta"] = evaluate("meta", exp, inputs, str(REPO / f"prompts/{exp}/meta-evaluation.md"), settings,
                            str(directory / "evaluation-meta.md"), cross=str(cross)).text
    return docs


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    cache: dict[str, dict[str, str]] = {}

    def get(exp: str) -> dict[str, str]:
        if exp not in cache:
            cache[exp] = render(exp, tmp_path_factory.mktemp(f"evaluations-{exp}"))
        return cache[exp]

    return get


def sections(doc: str) -> dict[str, str]:
    """Level-2 heading -> its text."""
    found, heading = {}, None
    for line in doc.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            found[heading] = ""
        elif heading is not None:
            found[heading] += line + "\n"
    return found


def first_heading(doc: str) -> str:
    return next(line[3:].strip() for line in doc.splitlines() if line.startswith("## "))


def first_paragraph(doc: str) -> str:
    return sections(doc)[first_heading(doc)].strip().split("\n\n")[0]


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in ``text``, as rows keyed by the header's cells."""
    found, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2:
            header = _cells(block[0])
            found.append([dict(zip(header, _cells(row))) for row in block[2:]])
        block = []
    return found


def table_with(text: str, column: str) -> list[dict[str, str]]:
    """The table of ``text`` that has ``column``."""
    matches = [t for t in tables(text) if t and column in t[0]]
    assert matches, f"no table with a column {column!r}"
    return matches[0]


def layer_of(cell: str) -> int | None:
    """'13 (0.72)' -> 13; 'never' -> None."""
    return None if cell in ("never", "n/a", "—") else int(cell.split()[0])


def depth_of(cell: str) -> float:
    return float(re.search(r"\(([\d.]+)\)", cell).group(1))


def written_count(pattern: str, text: str) -> int:
    """The count a sentence of ``text`` gives (0 where the sentence is not there: the analyst
    leaves out a clause whose count is 0)."""
    found = re.search(pattern, text)
    return int(found.group(1)) if found else 0


class Claims:
    """Claims checked against their tables: each ``holds`` is one claim."""

    def __init__(self) -> None:
        self.count = 0

    def holds(self, phrase: str, text: str, what: str = "") -> None:
        assert phrase in text, f"the document does not say what its table gives{f' ({what})' if what else ''}: {phrase!r}"
        self.count += 1

    def true(self, condition: bool, what: str) -> None:
        assert condition, what
        self.count += 1

    def close(self, written: float, computed: float, what: str, within: float = 0.011) -> None:
        assert abs(written - computed) <= within, f"{what}: written {written}, the table gives {computed}"
        self.count += 1


# ---------------------------------------------------------------- experiment 001


def _n_layers_001(model: str) -> int:
    return int(json.loads((REPO / "results" / "001" / f"output-{model}.json").read_text())["n_layers"])


def _lenses_001(model: str) -> list[str]:
    return list(json.loads((REPO / "results" / "001" / f"output-{model}.json").read_text()).get("lenses", ["logit"]))


def _check_emergence_001(claims: Claims, text: str, rows: list[dict[str, str]], n: int, lenses: list[str], correct_of,
                         elsewhere: bool = True) -> None:
    """The Summary's claims on one model against its per-probe rows (single-model or cross-model table)."""
    m = len(rows)
    correct = [r for r in rows if correct_of(r)]
    wrong = [r for r in rows if not correct_of(r)]
    claims.holds(f"is the expected answer on {len(correct)} of {m} probes", text, "probes answered")
    for lens in lenses:
        stays = [layer_of(r[f"{lens} lens: stays top-1 from"]) for r in correct]
        stays = [x for x in stays if x is not None]
        claims.holds(f"through the {lens} lens from {layers_text(stays, n)}", text, f"{lens} lens, stays top-1")
    first_column = {"logit": "logit lens: first top-1 layer (depth)", "tuned": None}
    for lens in lenses:
        column = first_column[lens] or next(k for k in rows[0] if k.startswith("tuned lens: first top-1 layer"))
        firsts = [x for r in wrong if (x := layer_of(r[column])) is not None]
        if not wrong or not elsewhere:
            continue
        claims.holds(
            f"the {lens} lens reads it as top-1 part-way on {len(firsts)} of them (first at {layers_text(firsts, n)})" if firsts
            else f"the {lens} lens never reads it as top-1", text, f"{lens} lens on the probes not answered")


def _peaks(rows: list[dict[str, str]]) -> list[tuple[float, int, float]]:
    found = []
    for r in rows:
        peak, layer, out = re.fullmatch(r"([\d.]+) \((\d+)\) / ([\d.]+)", r["logit lens: answer p peak (layer) / output"]).groups()
        found.append((float(peak), int(layer), float(out)))
    return found


def test_001_evaluations_answer_first_and_agree_with_their_tables(documents):
    docs = documents("001")
    claims = Claims()
    for model in MODELS:
        n, lenses = _n_layers_001(model), _lenses_001(model)
        doc = docs[model]
        # (a) the answer first: layers of how many, each lens named.
        opening = first_paragraph(doc)
        assert re.search(rf"\blayer \d+ of {n}\b", opening), opening
        for lens in lenses:
            assert f"{lens} lens" in opening, (lens, opening)
        assert "last layers" in opening
        # (b) each claim against the per-probe table.
        rows = table_with(sections(doc)["Where the answer emerges"], "logit lens: stays top-1 from")
        _check_emergence_001(claims, opening, rows, n, lenses, lambda r: r["answer p / rank"].endswith(" / 1"))
        peaks = _peaks(rows)
        raised = [p for p in peaks if p[1] == n]
        lowered = [p for p in peaks if p[1] < n and p[2] <= p[0]]
        claims.true(written_count(r"on (\d+) of \d+ probes the answer's probability is highest at the output layer itself", opening)
                    == len(raised), f"{model}: probes whose answer the last layers raise to its highest")
        claims.true(written_count(r"on (\d+) of \d+ probes the answer's probability peaks before the output", opening) == len(lowered),
                    f"{model}: probes whose answer the last layers lower")
        if lowered:
            claims.holds(f"at {layers_text([p[1] for p in lowered], n)}) and the last layers lower it", opening, "peak layers")
            written = re.search(r"peaks before the output \(median ([\d.]+),.*?lower it \(median ([\d.]+) at the output\)", opening)
            claims.close(float(written.group(1)), median(p[0] for p in lowered), "median peak")
            claims.close(float(written.group(2)), median(p[2] for p in lowered), "median at the output")
        out = [r for r in rows if layer_of(r["logit lens: first top-1 layer (depth)"]) is not None
               and layer_of(r["logit lens: stays top-1 from"]) is None]
        claims.true(written_count(r"On (\d+) probes? they push the answer out of top-1", opening) == len(out),
                    f"{model}: probes whose answer the last layers push out of top-1")
        if out:
            claims.holds(f"On {counted(len(out), 'probe')} they push the answer out of top-1 after the logit lens read it there "
                         f"(first at {layers_text([layer_of(r['logit lens: first top-1 layer (depth)']) for r in out], n)})", opening)
            for r in out:
                claims.holds(r["final top-1 (p)"].rsplit(" (", 1)[0], opening.split("in favour of", 1)[1], "the token that displaces it")
        else:
            claims.holds("They never push out of top-1 an answer the logit lens read there.", opening)
        # The middle band: the share of its top-1 readings that are an expected answer.
        middle = sections(doc)["What the middle layers say"]
        expected = {r["expected"] for r in rows}
        listed = re.findall(r"(`[^`]*`) ×(\d+)", middle)
        answers = sum(int(k) for t, k in listed if t in expected)
        total = sum(int(k) for _, k in listed)
        claims.holds(f"{answers} of these {total} readings are an expected answer: "
                     + ("under half" if answers * 2 < total else "at least half"), middle, "middle band")
        # Layer 0: the entropy table against the sentence about it.
        entropy = table_with(sections(doc)["Confidence and entropy"], "entropy at layer 0")
        low = sum(float(r["entropy at layer 0"]) < 1 for r in entropy)
        if low:
            claims.holds(f"At layer 0 the entropy is already below 1 nat on {low} probe(s)", sections(doc)["Confidence and entropy"])
        # A degenerate temperature fit is never shown as a fit: no "lowest ... at" the grid's bound unqualified.
        grid = json.loads((REPO / "results" / "001" / f"output-{model}.json").read_text()).get("temperatures") or []
        statistics = sections(doc)["Statistics"]
        for bound in {min(grid), max(grid)} if grid else set():
            for fit in re.findall(rf"-> [\d.]+ at {bound:g}(?![\d.])( \(the grid's bound)?", statistics):
                claims.true(fit != "", f"{model}: a fit at the grid's bound {bound:g} is not said to be at the bound")
        claims.true("-> 0.000 at" not in statistics, f"{model}: an error of 0 at some temperature is shown as a fit")
        # The order: the answer's sections before the statistics.
        headings = list(sections(doc))
        claims.true(headings.index("Where the answer emerges") < headings.index("Statistics"), "statistics before the answer")

    cross = docs["cross-model"]
    opening = first_paragraph(cross)
    rows = table_with(sections(cross)["Answer emergence by relative depth"], "logit lens: stays top-1 from")
    by_model = {m: [r for r in rows if r["model"] == m] for m in MODELS}
    depths = {}
    for model in MODELS:
        n, lenses = _n_layers_001(model), _lenses_001(model)
        own = opening.split(f"In {model} (", 1)[1].split(". In ", 1)[0]
        assert f"{n} layers)" in own and re.search(rf"\blayer \d+ of {n}\b", own), own
        for lens in lenses:
            assert f"{lens} lens" in own
        _check_emergence_001(claims, own, by_model[model], n, lenses, lambda r: r["output top-1"].endswith("(answer)"), elsewhere=False)
        peaks = _peaks(by_model[model])
        raised = sum(p[1] == n for p in peaks)
        lowered = sum(p[1] < n and p[2] <= p[0] for p in peaks)
        out = sum(layer_of(r["logit lens: first top-1 layer (depth)"]) is not None and layer_of(r["logit lens: stays top-1 from"]) is None
                  for r in by_model[model])
        claims.true(written_count(r"raise the answer's probability to its highest on (\d+) of", own) == raised, f"{model}: raised")
        claims.true(written_count(r"lower it from an earlier peak on (\d+) of", own) == lowered, f"{model}: lowered")
        claims.true(written_count(r"push it out of top-1 after it was read there on (\d+)", own) == out, f"{model}: pushed out")
        for lens in lenses:
            stays = [depth_of(r[f"{lens} lens: stays top-1 from"]) for r in by_model[model] if r["output top-1"].endswith("(answer)")
                     and r[f"{lens} lens: stays top-1 from"] != "never"]
            depths[model, lens] = median(stays)
    for lens in _lenses_001(MODELS[0]):
        written = re.search(rf"through the {lens} lens (\S+) settles on the answer earlier \(median relative depth ([\d.]+), "
                            rf"against ([\d.]+) for (\S+)\)", opening)
        early, late = sorted(MODELS, key=lambda m: (depths[m, lens], m))
        claims.true(written is not None and written.group(1) == early and written.group(4) == late, f"{lens} lens: which model is earlier")
        claims.close(float(written.group(2)), depths[early, lens], f"{lens} lens, {early}'s median depth", within=0.006)
        claims.close(float(written.group(3)), depths[late, lens], f"{lens} lens, {late}'s median depth", within=0.006)
    verdicts = {}
    for r in rows:
        verdicts.setdefault(r["probe"], set()).add(r["output top-1"].endswith("(answer)"))
    claims.holds(f"disagree on {sum(len(v) > 1 for v in verdicts.values())} of them", opening, "probes the models disagree on")
    stats = table_with(sections(cross)["Statistics"], "accuracy (95% CI)")
    claims.true(any(k.startswith("logit lens:") for k in stats[0]), "the statistics table's depth column names its lens")

    # Its opening restates the cross-model answer, which the cross-model table holds.
    meta_opening = first_paragraph(docs["meta"])
    for model in MODELS:
        n = _n_layers_001(model)
        stays = [layer_of(r["logit lens: stays top-1 from"]) for r in by_model[model] if r["output top-1"].endswith("(answer)")]
        claims.holds(f"from {layers_text(stays, n)} through the logit lens", meta_opening.split(f"in {model} ", 1)[1], f"meta: {model}")
    print(f"experiment 001: {claims.count} claims checked against their tables")
    assert claims.count >= 45


def test_001_meta_reading_follows_its_stated_rule_and_its_table(documents):
    """The 'nominalist or realist' reading: a rule with its threshold, and per model a verdict that
    the table's percentages give by that rule (the analyst called SmolLM2 realist at 4%)."""
    realism = sections(documents("001")["meta"])["Nominalist or realist?"]
    rule = re.search(r"in at least (\d+)% of its rows", realism)
    assert rule, "the reading states no rule with a threshold"
    share = int(rule.group(1))
    claims = Claims()
    for r in table_with(realism, "late: answer top-1"):
        model = r["model"]
        early, late = int(r["early: top-1 repeats input"].rstrip("%")), int(r["late: answer top-1"].rstrip("%"))
        nominal, real = early >= share, late >= share
        verdict = realism.split(f"{model}: ", 1)[1].split(". ", 1)[0]
        claims.holds(f"echoes the input in {early}% of rows, " + (f"at least {share}%: nominalist" if nominal else f"under {share}%: not nominalist"),
                     verdict, f"{model}: early band")
        claims.holds(f"answer top-1 in {late}% of rows, " + (f"at least {share}%: realist" if real else f"under {share}%: not realist"),
                     verdict, f"{model}: late band")
        claims.true(("fits the picture" in verdict) == (nominal and real), f"{model}: the overall reading")
    assert claims.count == 6


# ---------------------------------------------------------------- experiment 002


def _n_layers(exp: str, model: str) -> int:
    return int(json.loads((REPO / "results" / exp / f"output-{model}.json").read_text())["n_layers"])


def _check_patching_002(claims: Claims, text: str, subject: list[int | None], last: list[int | None], lens_rows, n: int) -> None:
    pairs = len(last)
    up = [x for x in subject if x is not None]
    start = [x for x in last if x is not None]
    claims.holds(f"at a subject token up to {layers_text(up, n, 'pair')}", text, "subject")
    claims.holds(f"at the last position, from {layers_text(start, n, 'pair')}", text, "last position")
    adjacent = sum(s is not None and t is not None and t == s + 1 for s, t in zip(subject, last))
    claims.holds(f"between adjacent layers on {adjacent} of {pairs} pairs", text, "hand-over")
    for lens, layers in lens_rows.items():
        read = [(x, t) for x, t in zip(layers, last) if x is not None]
        if not read:
            claims.holds(f"Experiment 001's {lens} lens never reads the answer", text)
            continue
        at = sum(x == t for x, t in read)
        later = sum(t is not None and x > t for x, t in read)
        earlier = sum(t is not None and x < t for x, t in read)
        claims.holds(
            f"Experiment 001's {lens} lens reads the answer as top-1 at the last position on {len(read)} of {len(layers)} pairs, "
            f"first at {layers_text([x for x, _ in read], n, 'pair')}: at the layer from which the last position restores it on "
            f"{at}, later on {later}, earlier on {earlier}.", text, f"{lens} lens against patching")


def test_002_evaluations_answer_first_and_agree_with_their_tables(documents):
    docs = documents("002")
    claims = Claims()
    for model in MODELS:
        n = _n_layers("002", model)
        doc = docs[model]
        opening = first_paragraph(doc)
        assert re.search(rf"\blayer \d+ of {n}\b", opening) and "logit lens" in opening and "tuned lens" in opening, opening
        assert "subject token" in opening and "last position" in opening
        where = table_with(sections(doc)["Where patching restores the answer"], "LD clean / corrupted")
        subject = [layer_of(r["denoise: a subject token >= 0.5 up to layer (depth)"]) for r in where]
        last = [layer_of(r["denoise: last position >= 0.5 from layer (depth)"]) for r in where]
        lens = table_with(sections(doc)["Lens and patching"], "001 logit lens: answer first top-1")
        claims.true([r["pair"] for r in lens] == [r["pair"] for r in where], "the two tables list the same pairs")
        claims.true([layer_of(r["patching: last position restores from"]) for r in lens] == last, "the two tables agree")
        _check_patching_002(claims, opening, subject, last, {
            "logit": [layer_of(r["001 logit lens: answer first top-1"]) for r in lens],
            "tuned": [layer_of(r["001 tuned lens: answer first top-1"]) for r in lens],
        }, n)
        flips = 0
        for r in where:
            clean, corrupted = (float(x) for x in r["LD clean / corrupted"].split(" / "))
            flips += clean > 0 > corrupted
        claims.holds(f"On {flips} of {len(where)} pairs the model prefers the clean answer", sections(doc)["Summary"], "pairs that flip")
        hand = sections(doc)["Subject and last position"]
        claims.holds(f"the subject stops carrying the fact at a median layer {median(x for x in subject if x is not None):g} and the last "
                     f"position starts at a median layer {median(x for x in last if x is not None):g} of {n}", hand, "medians")
    cross = docs["cross-model"]
    opening = first_paragraph(cross)
    rows = table_with(sections(cross)["By relative depth"], "model")
    depth = {}
    for model in MODELS:
        n = _n_layers("002", model)
        own = [r for r in rows if r["model"] == model]
        text = opening.split(f"In {model} (", 1)[1].split(" In ", 1)[0]
        assert re.search(rf"\blayer \d+ of {n}\b", text)
        _check_patching_002(claims, text, [layer_of(r["a subject token >= 0.5 up to layer (depth)"]) for r in own],
                            [layer_of(r["last position >= 0.5 from layer (depth)"]) for r in own], {
                                "logit": [layer_of(r["001 logit lens: answer first top-1"]) for r in own],
                                "tuned": [layer_of(r["001 tuned lens: answer first top-1"]) for r in own],
                            }, n)
        depth[model] = median(depth_of(r["last position >= 0.5 from layer (depth)"]) for r in own)
    early, late = sorted(MODELS, key=lambda m: (depth[m], m))
    claims.holds(f"{early} moves the fact to the last position earlier (median {depth[early]:.2f}, against {depth[late]:.2f} for {late})",
                 opening, "which model is earlier")
    meta = first_paragraph(docs["meta"])
    for model in MODELS:
        n = _n_layers("002", model)
        own = [r for r in rows if r["model"] == model]
        claims.holds(f"the last position from {layers_text([layer_of(r['last position >= 0.5 from layer (depth)']) for r in own], n, 'pair')}",
                     meta.split(f"in {model} ", 1)[1], f"meta: {model}")
    print(f"experiment 002: {claims.count} claims checked against their tables")
    assert claims.count >= 30


# ---------------------------------------------------------------- experiment 003


def _verdict_003(value: float, deeper: float) -> str:
    return ("content words settle deeper" if value > deeper else "function words settle deeper" if value < 1 - deeper
            else "neither class settles clearly deeper")


def _check_lens_rows_003(claims: Claims, text: str, rows: list[dict[str, str]], n: int) -> None:
    for r in rows:
        layer = r["median settling layer (depth)"].split()[0]
        only = next(v for k, v in r.items() if k.startswith("settle only at") or k == "only at the last layer")
        tenth = next(v for k, v in r.items() if k.startswith("settle in the last tenth") or k == "in the last tenth")
        claims.holds(f"at a median layer {layer} of {n}; {only} of {r['tokens']} only at the last layer, {tenth} in the last tenth",
                     text, f"{r['lens']} lens")


def test_003_evaluations_answer_first_and_agree_with_their_tables(documents):
    docs = documents("003")
    claims = Claims()
    for model in MODELS:
        n = _n_layers("003", model)
        doc = docs[model]
        opening = first_paragraph(doc)
        assert re.search(rf"\blayer \d+ of {n}\b", opening) and "logit lens" in opening and "tuned lens" in opening, opening
        _check_lens_rows_003(claims, opening, table_with(sections(doc)["Where generated tokens settle"], "median settling layer (depth)"), n)
        classes = table_with(sections(doc)["Content and function words"], "median settling layer")
        layer = {r["class"]: r["median settling layer"] for r in classes if r["lens"] == "logit"}
        claims.holds(f"content words settle at a median layer {layer['content']} and function words at {layer['function']}", opening)
        deeper = float(re.search(r"above ([\d.]+) counts as content deeper", opening).group(1))
        value = float(re.search(r"settles deeper than a function word ([\d.]+)", opening).group(1))
        claims.holds(_verdict_003(value, deeper) + " (probability", opening, "class verdict by the stated rule")
    cross = docs["cross-model"]
    opening = first_paragraph(cross)
    rows = table_with(sections(cross)["By relative depth"], "median settling layer (depth)")
    by_class = table_with(sections(cross)["By relative depth"], "P(content deeper)")
    depth = {}
    for model in MODELS:
        n = _n_layers("003", model)
        text = opening.split(f"In {model} (", 1)[1].split(" In ", 1)[0]
        own = [r for r in rows if r["model"] == model]
        _check_lens_rows_003(claims, text, own, n)
        logit = next(r for r in own if r["lens"] == "logit")
        claims.holds(f"content words settle at a median layer {logit['content: median layer']} and function words at "
                     f"{logit['function: median layer']}", text)
        p = float(next(r for r in by_class if r["model"] == model)["P(content deeper)"])
        claims.holds(_verdict_003(p, 0.6) + f" (probability that a content word settles deeper than a function word {p:.2f}", text)
        depth[model] = depth_of(logit["median settling layer (depth)"])
    early, late = sorted(MODELS, key=lambda m: (depth[m], m))
    claims.holds(f"{early}'s tokens settle earlier (median {depth[early]:.2f}, against {depth[late]:.2f} for {late})", opening)
    deeper = [r["model"] for r in by_class if float(r["P(content deeper)"]) > 0.6]
    claims.holds(f"in {len(deeper)} of {len(by_class)} models", sections(cross)["Differences between models"], "models with content deeper")
    meta = first_paragraph(docs["meta"])
    for model in MODELS:
        n = _n_layers("003", model)
        for r in (r for r in rows if r["model"] == model):
            claims.holds(f"a median layer {r['median settling layer (depth)'].split()[0]} of {n} through the {r['lens']} lens",
                         meta.split(f"{model}'s", 1)[1], f"meta: {model}")
    print(f"experiment 003: {claims.count} claims checked against their tables")
    assert claims.count >= 20


# ---------------------------------------------------------------- experiment 004


def _component_words(name: str) -> str:
    layer, component = re.fullmatch(r"L(\d+)\.(\w+)", name).groups()
    if component == "mlp":
        return f"the MLP of block {layer}"
    if component == "attention":
        return f"the attention of block {layer}"
    return f"head {component[4:]} of block {layer}"


def _check_components_004(claims: Claims, text: str, sites: list[dict[str, str]], writers: list[dict[str, str]], n_pairs: int) -> None:
    where = {"subject": "at the subject token", "last": "at the last position"}
    whole = [s for s in sites if ".head" not in s["component"]]
    claims.holds(f"{counted(len(whole), 'component')} restore the answer" if len(whole) > 1 else "one component restores the answer",
                 text, "how many components restore")
    for s in sites:
        pairs = s["pairs restored"].split(" of ")[0]
        if ".head" in s["component"]:
            claims.holds(f"{_component_words(s['component'])} alone ({pairs} of {n_pairs}, {s['recovered range']})", text, s["component"])
        else:
            claims.holds(f"{_component_words(s['component'])} {where[s['position']]} ({pairs} of {n_pairs} pairs, recovered "
                         f"{s['recovered range']})", text, s["component"])
    for w in writers:
        claims.holds(f"{_component_words(w['largest direct writer'])} on {w['pairs']} pairs", text, "largest direct writer")


def test_004_evaluations_answer_first_and_agree_with_their_tables(documents):
    docs = documents("004")
    claims = Claims()
    for model in MODELS:
        n = _n_layers("004", model)
        doc = docs[model]
        opening = first_paragraph(doc)
        assert re.search(r"\bblock \d+\b", opening) and f"{n} blocks" in opening, opening
        assert "patched" in opening and "direct logit attribution" in opening and "last position" in opening
        sites = table_with(sections(doc)["Component patching"], "pairs restored")
        writers = table_with(sections(doc)["Which components write the answer"], "largest direct writer")
        n_pairs = int(sites[0]["pairs restored"].split(" of ")[1])
        _check_components_004(claims, opening, sites, writers, n_pairs)
        # The per-pair bullets name the same largest writer as the count.
        named = Counter(re.findall(r"the largest single share is (.+?) \([+\u2212-]", sections(doc)["Which components write the answer"]))
        claims.true(named == Counter({_component_words(w["largest direct writer"]): int(w["pairs"].split(" of ")[0]) for w in writers}),
                    f"{model}: the largest writers counted and the per-pair bullets")
    cross = docs["cross-model"]
    opening = first_paragraph(cross)
    body = sections(cross)["By relative depth"]
    sites, writers = table_with(body, "pairs restored"), table_with(body, "largest direct writer")
    for model in MODELS:
        text = opening.split(f"In {model} (", 1)[1].split(" In ", 1)[0]
        own = [s for s in sites if s["model"] == model]
        n_pairs = int(own[0]["pairs restored"].split(" of ")[1])
        _check_components_004(claims, text, own, [w for w in writers if w["model"] == model], n_pairs)
        whole = sorted((s for s in own if ".head" not in s["component"]), key=lambda s: int(s["block (of)"].split()[0]))
        claims.holds(f"{model} " + " and ".join(f"{s['relative depth']} ({_component_words(s['component'])}, {s['position']})" for s in whole), opening,
                     f"{model}: relative depths")
        top = max((w for w in writers if w["model"] == model), key=lambda w: int(w["pairs"].split(" of ")[0]))
        names = {s["component"] for s in own}
        last = max(int(s["block (of)"].split()[0]) for s in own)
        block = int(re.fullmatch(r"L(\d+)\..*", top["largest direct writer"]).group(1))
        sentence = opening.split(f"In {model} the largest direct writer", 1)[1].split(". ", 1)[0]
        claims.holds(f"({_component_words(top['largest direct writer'])}, {top['pairs']} pairs)", sentence, f"{model}: the largest writer named")
        if top["largest direct writer"] in names:
            claims.holds("is itself a component that restores the answer", sentence, f"{model}: writer among the restoring")
        else:
            claims.holds("does not restore the answer alone", sentence, f"{model}: writer not among the restoring")
            if block > last:
                claims.holds(f"sits {block - last} block{'s' if block - last > 1 else ''} after the last component that does", sentence)
    meta = first_paragraph(docs["meta"])
    where = {"subject": "at the subject token", "last": "at the last position"}
    for model in MODELS:
        for s in (s for s in sites if s["model"] == model and ".head" not in s["component"]):
            claims.holds(f"{_component_words(s['component'])} {where[s['position']]}", meta.split(f"in {model} ", 1)[1].split(";")[0])
    print(f"experiment 004: {claims.count} claims checked against their tables")
    assert claims.count >= 30

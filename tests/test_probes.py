"""Probe sets (workflow/config/probes.py): from the config, from files, from the shipped LRE
relations; and what is refused, with the file, line or key named."""

import json
from pathlib import Path

import pytest

from workflow.base.errors import UserError
from workflow.config.probes import load, relation_names

REPO = Path(__file__).resolve().parents[1]
PROBES = [
    {"id": "a", "prompt": "The capital of France is", "answer": " Paris"},
    {"id": "a-rev", "prompt": "Paris is the capital of", "answer": " France", "reverse_of": "a", "relation": "capitals"},
]


def test_the_shipped_data_keeps_its_licence_and_every_relation_loads():
    assert "MIT License" in (REPO / "data" / "lre-relations" / "LICENSE").read_text()
    names = relation_names(REPO)
    assert len(names) == 40
    for name in names:
        probes = load({"relations": [name]}, REPO)
        assert probes and all(p["relation"] == name and p["answer"].startswith(" ") for p in probes)


def test_a_relation_in_both_directions_pairs_each_fact():
    probes = load({"relations": "country_capital_city", "directions": "both"}, REPO)
    assert len(probes) == 48
    by_id = {p["id"]: p for p in probes}
    germany = by_id["country_capital_city.germany"]
    reverse = by_id["country_capital_city.germany.reverse"]
    assert germany["prompt"] == "The capital city of Germany is" and germany["answer"] == " Berlin"
    assert reverse["prompt"] == "Berlin is the capital of" and reverse["answer"] == " Germany"
    assert reverse["reverse_of"] == germany["id"]
    # The data's escaped letters are decoded.
    assert by_id["country_capital_city.brazil"]["answer"] == " Brasília"
    assert load({"relations": "country_capital_city", "template": 1, "limit": 2}, REPO)[0]["prompt"] == (
        "The capital of United States is"
    )


def test_reverse_probes_only_where_the_object_has_one_subject():
    probes = load({"relations": ["company_ceo"], "directions": "reverse"}, REPO)
    answers = [p["prompt"] for p in probes]
    assert len(answers) == len(set(answers))  # no reverse prompt with two answers
    assert all("reverse_of" not in p for p in probes)  # reverse alone: nothing to pair with


@pytest.mark.parametrize("suffix", ["yaml", "csv", "jsonl"])
def test_probe_files(tmp_path, suffix):
    path = tmp_path / f"set.{suffix}"
    if suffix == "yaml":
        import yaml

        path.write_text(yaml.safe_dump({"probes": PROBES}), encoding="utf-8")
    elif suffix == "csv":
        path.write_text(
            "id,prompt,answer,reverse_of,relation\na,The capital of France is, Paris,,\n"
            "a-rev,Paris is the capital of, France,a,capitals\n",
            encoding="utf-8",
        )
    else:
        path.write_text("".join(json.dumps(p) + "\n" for p in PROBES), encoding="utf-8")
    assert load({"file": str(path)}) == PROBES


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"relations": ["no_such_relation"]}, "no shipped relation 'no_such_relation'"),
        ({"relations": ["city_in_country"], "directions": "both"}, "has no reverse template"),
        ({"relations": ["country_capital_city"], "template": 5}, "template 5 does not exist"),
        ({"file": "nowhere.yaml"}, "probes.file: nowhere.yaml does not exist"),
    ],
)
def test_bad_probe_sets_are_refused_by_name(spec, words):
    with pytest.raises(UserError, match=words):
        load(spec, REPO)


def test_bad_probe_files_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PROBES[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl, line 2: not valid JSON"):
        load({"file": str(bad)})
    twice = tmp_path / "twice.jsonl"
    twice.write_text(json.dumps(PROBES[0]) + "\n" + json.dumps(PROBES[0]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"twice.jsonl: probe ids must be unique; repeated: a"):
        load({"file": str(twice)})
    header = tmp_path / "header.csv"
    header.write_text("name,text\nx,y\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"header.csv: the header must name id, prompt and answer"):
        load({"file": str(header)})
    blank = tmp_path / "blank.yaml"
    blank.write_text("- {id: x, prompt: '  ', answer: ' y'}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"blank.yaml, probe 1: prompt is missing or blank"):
        load({"file": str(blank)})


def test_a_csv_row_with_more_fields_than_the_header_is_refused_with_its_line(tmp_path):
    path = tmp_path / "probes.csv"
    path.write_text('id,prompt,answer\np0,"Paris is in", France\np1,The capital of Germany, is, Berlin\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"probes.csv, line 3: 4 fields but the header has 3") as info:
        load({"file": str(path)}, tmp_path)
    assert "quote" in str(info.value)


def test_a_csv_that_is_not_utf8_is_refused_naming_the_file_and_line(tmp_path):
    path = tmp_path / "probes.csv"
    path.write_bytes('id,prompt,answer\np1,The capital of Germany is, Berlin\np2,Caf\xe9s are in, Paris\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"probes.csv: not UTF-8 text \(line 3") as info:
        load({"file": str(path)}, tmp_path)
    assert "save it as UTF-8" in str(info.value)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "probes.csv"
    path.write_bytes("\ufeffid,prompt,answer\np1,The capital of Germany is, Berlin\n".encode("utf-8"))
    (probe,) = load({"file": str(path)}, tmp_path)
    assert probe == {"id": "p1", "prompt": "The capital of Germany is", "answer": " Berlin"}


def test_a_csv_that_names_a_column_twice_is_refused_naming_it(tmp_path):
    path = tmp_path / "probes.csv"
    path.write_text('id,prompt,answer,answer\nq1,The capital of Germany is, Berlin, Paris\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"probes.csv: the header names answer more than once"):
        load({"file": str(path)}, tmp_path)


def test_an_error_about_one_of_50000_probes_is_one_short_line(tmp_path):
    from workflow.lens.pairs import check_pairs

    probes = [{"id": f"p{i}", "prompt": f"Prompt {i} is", "answer": " x"} for i in range(50_000)]
    pair = {"id": "pair", "clean": "A is", "clean_answer": " b", "corrupted": "C is", "corrupted_answer": " d", "probe": "p-typo"}
    with pytest.raises(UserError) as error:
        check_pairs([pair], probes, "config/config.yaml")
    message = str(error.value)
    assert "names probe 'p-typo'" in message and "(and 49,990 more)" in message and "\n" not in message
    assert len(message) < 600
    with pytest.raises(UserError) as error:
        load(probes + probes[:20], tmp_path)
    assert "repeated: p0, p1" in str(error.value) and "(and 10 more)" in str(error.value) and len(str(error.value)) < 600
    with pytest.raises(UserError) as error:
        load([{"id": "x" * 100_000, "prompt": "y", "answer": " z"}], tmp_path)
    assert "at most 100 of them" in str(error.value) and len(str(error.value)) < 600
    with pytest.raises(UserError) as error:
        load([["not", "a", "mapping", "x" * 100_000]], tmp_path)
    assert len(str(error.value)) < 600


def test_a_pair_names_a_probe_of_the_set_whatever_its_source(tmp_path):
    """A pair's probe: must be in the probe set whether the set is inline, from a file or
    from the shipped relations; a pair naming none is linked to the probe with its clean
    prompt and answer."""
    from workflow.lens.pairs import check_pairs

    path = tmp_path / "probes.csv"
    path.write_text("id,prompt,answer\ngermany,The capital of Germany is, Berlin\n", encoding="utf-8")
    probes = load({"file": str(path)}, tmp_path)
    pair = {"id": "g", "clean": "The capital of Germany is", "clean_answer": " Berlin",
            "corrupted": "The capital of France is", "corrupted_answer": " Paris"}
    with pytest.raises(UserError, match=r"pair 'g' names probe 'germny', which is not one of the probes \(germany\); did you mean 'germany'\?"):
        check_pairs([{**pair, "probe": "germny"}], probes, "config/config.yaml")
    assert check_pairs([pair], probes, "c")[0]["probe"] == "germany"
    assert "probe" not in check_pairs([{**pair, "clean": "The capital of Italy is"}], probes, "c")[0]
    relations = load({"relations": ["country_capital_city"]}, Path(__file__).resolve().parents[1])
    with pytest.raises(UserError, match="names probe 'capital-germany', which is not one of the probes"):
        check_pairs([{**pair, "probe": "capital-germany"}], relations, "c")


JOINED = "The capital of Italy is"  # an answer "Rome" after it reads as the end of "is"


@pytest.mark.parametrize(
    "prompt, answer, joins",
    [
        (JOINED, "Rome", True),
        (JOINED, " Rome", False),
        ("Q: the capital of Italy? A:", "Rome", True),  # running text has a space after , ; : ! ?
        ("Italy, France,", "Spain", True),
        ("The capital of Germany is Ber", "lin", True),  # meant: answer_joins
        ("The year was 19", "89", True),
        ('The capital of Italy is "', "Rome", False),  # after an opening quote, a bracket, a hyphen
        ("The capital of Italy is (", "Rome", False),
        ("Baden-", "Württemberg", False),
        ("The answer is 3.", "14", False),  # a full stop ends sentences, decimals and code alike
        (JOINED, "\u201cRome", False),  # not a letter or digit
        ("日本の首都は", "東京", False),  # scripts written without spaces between words
        ("The capital of Japan is 東", "京", False),
        ("Die Hauptstadt von Österreich ist", "Wien", True),
    ],
)
def test_the_rule_for_an_answer_joined_to_its_prompt(prompt, answer, joins):
    from workflow.config.probes import joins_prompt

    assert joins_prompt(prompt, answer) is joins


def _probe_file(tmp_path, suffix, probes):
    path = tmp_path / f"probes.{suffix}"
    if suffix == "yaml":
        import yaml

        path.write_text(yaml.safe_dump(probes), encoding="utf-8")
    elif suffix == "jsonl":
        path.write_text("".join(json.dumps(p) + "\n" for p in probes), encoding="utf-8")
    else:
        import csv

        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, ["id", "prompt", "answer", "answer_joins"])
            writer.writeheader()
            writer.writerows({**p, "answer_joins": {True: "true", False: "false"}.get(p.get("answer_joins"), "")} for p in probes)
    return {"file": str(path)}


@pytest.mark.parametrize("source", ["inline", "yaml", "csv", "jsonl"])
def test_an_answer_without_its_space_is_refused_naming_file_probe_and_fix(tmp_path, source):
    """Whatever the probe set's source, the error names it, the probe (number and id) and the
    answer with its space; ``answer_joins: true`` says a joined answer is meant, and is not
    passed on (it changes no result)."""
    probes = [PROBES[0], {"id": "capital-italy", "prompt": JOINED, "answer": "Rome"}]
    spec = probes if source == "inline" else _probe_file(tmp_path, source, probes)
    where = "config/config.yaml: key probes" if source == "inline" else f"probes.{source}"
    with pytest.raises(UserError) as info:
        load(spec, tmp_path)
    message = str(info.value)
    assert f"{where}, probe 2 ('capital-italy'): the answer 'Rome'" in message
    assert "did you mean ' Rome'?" in message and "answer_joins: true" in message
    probes[1]["answer_joins"] = True
    spec = probes if source == "inline" else _probe_file(tmp_path, source, probes)
    assert load(spec, tmp_path) == [PROBES[0], {"id": "capital-italy", "prompt": JOINED, "answer": "Rome"}]
    probes[1]["answer_joins"] = False
    spec = probes if source == "inline" else _probe_file(tmp_path, source, probes)
    with pytest.raises(UserError, match="did you mean ' Rome'"):
        load(spec, tmp_path)


@pytest.mark.parametrize("source", ["inline", "csv"])
def test_answer_joins_is_true_or_false(tmp_path, source):
    probe = {"id": "capital-italy", "prompt": JOINED, "answer": "Rome", "answer_joins": "yes"}
    spec = [probe] if source == "inline" else (tmp_path / "p.csv")
    if source == "csv":
        spec.write_text(f"id,prompt,answer,answer_joins\ncapital-italy,{JOINED},Rome,yes\n", encoding="utf-8")
        spec = {"file": str(spec)}
    with pytest.raises(UserError, match=r"probe 1 \('capital-italy'\): answer_joins is true or false, not 'yes'"):
        load(spec, tmp_path)


def test_a_pair_answer_without_its_space_is_refused_unless_meant():
    from workflow.lens.pairs import check_pairs

    pair = {"id": "g", "clean": "The capital of Germany is", "clean_answer": " Berlin",
            "corrupted": "The capital of France is", "corrupted_answer": "Paris"}
    with pytest.raises(UserError) as info:
        check_pairs([pair], PROBES, "config/config.yaml")
    assert "config/config.yaml, patching.pairs: pair 'g': the corrupted_answer 'Paris'" in str(info.value)
    assert "did you mean ' Paris'?" in str(info.value)
    (checked,) = check_pairs([{**pair, "answer_joins": True}], PROBES, "config/config.yaml")
    assert "answer_joins" not in checked


def test_every_committed_probe_set_has_its_spaces():
    """The config's probes and pairs, and every shipped relation in each direction and
    template, pass the check (load refuses an answer joined to its prompt)."""
    import yaml

    from workflow.lens.pairs import check_pairs

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    probes = load(config["probes"], REPO)
    assert check_pairs(config["patching"]["pairs"], probes, "config/config.yaml")
    reverse = yaml.safe_load((REPO / "data" / "lre-reverse.yaml").read_text(encoding="utf-8"))["relations"]
    for name, path in relation_names(REPO).items():
        for template in range(len(json.loads(path.read_text(encoding="utf-8"))["prompt_templates"])):
            assert load({"relations": [name], "template": template, "directions": "both" if name in reverse else "forward"}, REPO)


def test_planning_refuses_an_answer_without_its_space(tmp_path):
    """The dry run stops with the probe file, the probe and the fix on its last line."""
    from pipeline import planning_error, scratch_copy, snakemake

    workdir = scratch_copy(tmp_path / "w")
    (workdir / "italy.csv").write_text(f"id,prompt,answer\ncapital-italy,{JOINED},Rome\n", encoding="utf-8")
    result = snakemake(workdir, "-n", "--config", "probes={file: italy.csv}", timeout=300)
    planning_error(result, "italy.csv, probe 1 ('capital-italy'): the answer 'Rome'", "did you mean ' Rome'?")

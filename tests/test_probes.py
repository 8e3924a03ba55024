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

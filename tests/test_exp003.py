"""Experiment 003, generation: the pipeline from nothing on the tiny models, its records
against its JSON and against experiment 001, its evaluations' figures against the records,
and the word classes."""

import json

import pandas as pd
import pytest

from workflow.experiments.exp003.analysis import FUNCTION_WORDS, model_facts, superiority, word_class
from workflow.lens.records import read_records


@pytest.fixture(scope="module")
def generated_run(tiny_dirs, tmp_path_factory):
    from conftest import tiny_config
    from pipeline import finished_run

    config = tiny_config(tiny_dirs, lenses=["logit"], generation={"max_new_tokens": 6, "max_probes": 2})
    return finished_run(tmp_path_factory.mktemp("generation"), config, "results/003/evaluation-cross-model.md",
                        *(f"results/001/output-tiny-{arch}-records.csv" for arch in ("llama", "gemma3")))


def test_the_chain_builds_from_nothing(generated_run):
    from pipeline import files_under

    results = generated_run / "results" / "003"
    names = files_under(results)
    for model in ("tiny-llama", "tiny-gemma3"):
        for name in (f"output-{model}.json", f"output-{model}-records.csv", f"evaluation-{model}.md",
                     f"plots/{model}/generation-capital.png", f"plots/{model}/generation-capital-reverse.png",
                     f"provenance/output-{model}.prov.json", f"provenance/evaluation-{model}.prov.json"):
            assert name in names, name
    # max_probes: the third probe is not generated from.
    assert not any("generation-instruction" in n for n in names)
    assert "evaluation-cross-model.md" in names and "plots/cross-model-settling.png" in names
    single = (results / "evaluation-tiny-llama.md").read_text()
    assert single.startswith("# tiny-llama: generation (experiment 003)")
    for heading in ("## Where generated tokens settle", "## Content and function words", "## Logit and tuned lens", "## Caveats"):
        assert heading in single
    assert (generated_run / "logs" / "003" / "run_generation-tiny-llama.log").is_file()


def test_records_agree_with_the_json_and_with_001(generated_run):
    results = generated_run / "results"
    for model in ("tiny-llama", "tiny-gemma3"):
        summary = json.loads((results / "003" / f"output-{model}.json").read_text())
        frame = read_records(str(results / "003" / f"output-{model}-records.csv"))
        n_layers = summary["n_layers"]
        assert summary["generation"]["max_new_tokens"] == 6 and [p["id"] for p in summary["probes"]] == ["capital", "capital-reverse"]
        for probe in summary["probes"]:
            rows = frame[frame["probe"] == probe["id"]]
            assert len(rows) == len(probe["tokens"]) * (n_layers + 1)
            for t in probe["tokens"]:
                own = rows[rows["position"] == t["index"]].sort_values("layer")
                assert set(own["answer_token"]) == {t["token"]}
                ranks = list(own["answer_rank"])
                assert ranks[-1] == 1  # greedy: the model's own top-1
                assert t["first_top1_layer"] == ranks.index(1)
                stable = len(ranks) - next(i for i, r in enumerate(reversed(ranks)) if r != 1) if any(r != 1 for r in ranks) else 0
                assert t["stable_top1_layer"] == stable
                assert t["model_prob"] == pytest.approx(float(own["answer_prob"].iloc[-1]), abs=1e-5)
        # The first generated token is predicted at the prompt's last position: 001 recorded
        # the same layer statistics there.
        lens = read_records(str(results / "001" / f"output-{model}-records.csv"))
        first_summary = json.loads((results / "001" / f"output-{model}.json").read_text())["probes"][0]
        last = len(first_summary["input_ids"]) - 1
        want = lens[(lens["probe"] == "capital") & (lens["lens"] == "logit") & (lens["position"] == last)].sort_values("layer")
        got = frame[(frame["probe"] == "capital") & (frame["position"] == 0)].sort_values("layer")
        assert list(got["top1_token"]) == list(want["top1_token"])
        assert list(got["entropy"]) == pytest.approx(list(want["entropy"]), abs=2e-5)
        assert list(got["kl_to_final"]) == pytest.approx(list(want["kl_to_final"]), abs=2e-5)


def test_evaluation_figures_are_the_records(generated_run):
    """The class counts and median depths the offline analyst writes, recomputed from the JSON."""
    results = generated_run / "results" / "003"
    summary = json.loads((results / "output-tiny-gemma3.json").read_text())
    n_layers = summary["n_layers"]
    classes, previous = [], None
    for probe in summary["probes"]:
        previous = None
        for t in probe["tokens"]:
            classes.append((word_class(t["token"], previous, t["special"]), t["stable_top1_layer"] / n_layers))
            previous = t["token"]
    table = pd.DataFrame(classes, columns=["class", "depth"]).groupby("class")["depth"].agg(["count", "median"])
    text = (results / "evaluation-tiny-gemma3.md").read_text()
    for name, row in table.iterrows():
        assert f"| logit | {name} | {int(row['count'])} |" in text
        line = next(l for l in text.splitlines() if l.startswith(f"| logit | {name} |"))
        assert line.rstrip(" |").endswith(f"{row['median']:.2f}")
    facts = model_facts(results / "output-tiny-gemma3.json", results / "output-tiny-gemma3-records.csv")
    assert facts.n_tokens == len(classes)


def test_word_classes():
    assert word_class(" the", "is", False) == "function"
    assert word_class(" Paris", " of", False) == "content"
    assert word_class("The", None, False) == "function"
    assert word_class("ing", " walk", False) == "continuation"
    assert word_class(".", " Paris", False) == "other"
    assert word_class(" 1984", " in", False) == "other"
    assert word_class("\n", ".", False) == "other"
    assert word_class("<eos>", ".", True) == "special"
    assert word_class("▁Berlin", "▁is", False) == "content"
    assert "of" in FUNCTION_WORDS and "capital" not in FUNCTION_WORDS


def test_superiority():
    assert superiority([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert superiority([0.1], [0.9]) == 0.0
    assert superiority([0.5], [0.5]) == 0.5
    assert superiority([0.5, 0.9], [0.5]) == 0.75
    assert superiority([], [0.5]) is None

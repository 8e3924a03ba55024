"""What keeps results the same on every run and machine: stated precision, rounded
digests, and a response cache that float rounding on another processor does not miss."""

import io
import json

from workflow.evaluation.cache import ResponseCache, cache_key, same_but_rounding
from workflow.evaluation.text import magnitude_text, rank_text
from workflow.lens.records import COLUMNS, read_records, rounded, write_records


def test_records_are_written_to_six_significant_digits():
    row = {c: 0 for c in COLUMNS} | {"model": "m", "probe": "p", "lens": "logit", "input_token": "a", "top1_token": "b",
                                      "answer_token": "c", "topk_tokens": ["b", "d"]}
    row |= {"top1_prob": 0.80345678912, "topk_probs": [0.80345678912, 1.23456789e-277], "entropy": 1.0000004,
            "answer_prob": 2 / 3, "kl_to_final": 1084.002774516556}
    fh = io.StringIO()
    write_records(fh, [row])
    fh.seek(0)
    back = read_records(fh).iloc[0]
    assert back.top1_prob == 0.803457 and back.topk_probs == [0.803457, 1.23457e-277]
    assert back.entropy == 1.0 and back.answer_prob == 0.666667 and back.kl_to_final == 1084.0
    assert rounded({"a": [1 / 3, {"b": 2.0, "c": "x"}], "n": 7}) == {"a": [0.333333, {"b": 2.0, "c": "x"}], "n": 7}


def test_digest_writes_noise_prone_figures_coarsely():
    assert [rank_text(r) for r in (1, 100, 101, 1523, 171895)] == ["1", "100", "~100", "~1500", "~170000"]
    assert magnitude_text(0.0) == "0" and magnitude_text(2.3e-7) == "at most 1e-06" and magnitude_text(1e-5) == "at most 1e-05"


def test_numbers_one_unit_apart_in_their_last_digit_are_rounding():
    assert same_but_rounding("p 0.803, 1.2e-05 at layer 13", "p 0.804, 1.3e-05 at layer 13")
    assert same_but_rounding("x 0.0999 y", "x 0.1 y")  # .3g of 0.09994 and of 0.09996
    assert not same_but_rounding("p 0.803", "p 0.805")  # two units
    assert not same_but_rounding("layer 13", "layer 14")  # integers are not rounding
    assert not same_but_rounding("x 0.1", "x 0.19")
    assert not same_but_rounding("p 0.803 of Paris", "p 0.803 of Berlin")
    assert not same_but_rounding("p 0.803", "p 0.803 0.1")


def test_cache_answers_a_request_that_differs_only_by_rounding(tmp_path, caplog):
    cache = ResponseCache(tmp_path)
    stored = {"provider": "openai", "model": "m", "system": "s", "messages": [{"role": "user", "content": "p 0.803 at layer 13"}]}
    cache.put(cache_key(stored), stored, "the committed answer", None)
    nearby = json.loads(json.dumps(stored))
    nearby["messages"][0]["content"] = "p 0.802 at layer 13"
    with caplog.at_level("INFO"):
        assert cache.get(cache_key(nearby), nearby) == "the committed answer"
    assert "one unit apart" in caplog.text
    for changed in ("p 0.802 at layer 14", "p 0.700 at layer 13"):
        other = json.loads(json.dumps(stored))
        other["messages"][0]["content"] = changed
        assert cache.get(cache_key(other), other) is None
    other_model = dict(nearby, model="another")
    assert cache.get(cache_key(other_model), other_model) is None
    assert cache.get(cache_key(nearby)) is None  # without the request, only the exact key counts


# What the jobs Snakemake gives the threads write (001's lens after the tuned lens's training,
# 003's generation, 005's words): every other job runs on one, whatever --cores says, and
# reads only what these write.
MODEL_OUTPUTS = [f"results/{exp}/output-tiny-{arch}.json" for exp in ("001", "003", "005") for arch in ("llama", "gemma3")]


def test_one_and_two_threads_give_the_same_files(tiny_dirs, tuned_run, tmp_path):
    """The tiny pipeline's model jobs, tuned lens included, at --cores 2 (the session's
    shared run) and --cores 1: every file they write under results/ is the same, byte for
    byte (Snakemake gives the model jobs the threads; the 001 records hold the tuned lens's
    readings)."""
    from conftest import TUNED, tiny_config
    from pipeline import files_under, said, scratch_copy, snakemake

    runs = {"2": tuned_run}
    workdir = scratch_copy(tmp_path / "cores-1", tiny_config(tiny_dirs, **TUNED))
    result = snakemake(workdir, "--cores", "1", *MODEL_OUTPUTS)
    assert result.returncode == 0, said(result)[-3000:]
    assert "plot_heatmaps" not in said(result)  # only the model jobs (and what they read) ran
    runs["1"] = workdir
    for cores, workdir in runs.items():
        assert f"rule run_lens with {cores} thread(s)" in (workdir / "logs" / "001" / "run_lens-tiny-llama.log").read_text()
        assert f"rule train_tuned_lens with {cores} thread(s)" in (workdir / "logs" / "lenses" / "train_tuned_lens-tiny-llama.log").read_text()
    files = files_under(runs["1"] / "results")
    assert set(files) <= set(files_under(runs["2"] / "results"))
    for made in ("001/output-tiny-gemma3-records.csv", "003/output-tiny-gemma3-records.csv", "005/output-tiny-gemma3-records.csv"):
        assert made in files, (made, files)
    different = [f for f in files if (runs["1"] / "results" / f).read_bytes() != (runs["2"] / "results" / f).read_bytes()]
    assert different == []

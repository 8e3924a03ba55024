"""The estimate a dry run and a job's log give before a model job starts
(workflow/model/cost.py): its work, its rate, and where it is said."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from workflow.base.errors import UserError
from workflow.model.cost import Shape, estimate, job_work
from workflow.provenance.logs import run_script

SHAPE = Shape(layers=30, width=576, vocabulary=49152, heads=9, parameters=135_000_000, active=106_000_000)
CONFIG = {"lenses": ["logit", "tuned"], "generation": {"max_new_tokens": 12, "max_probes": 2},
          "patching": {"trace": {"samples": 4}}, "components": {"exact": True},
          "tuned_lens": {"train_sequences": 48, "seq_len": 128, "heldout_positions": 256}}
PROBES = [{"prompt": "The capital of France is"}, {"prompt": "Water is made of hydrogen and"}, {"prompt": "x"}]
PAIRS = [{"clean": "The capital of France is"}]


def test_the_work_of_each_job_is_counted_from_the_config():
    # "The capital of France is": 24 characters, 1 + ceil(24 / 3.5) = 8 tokens.
    lens = job_work("run_lens", CONFIG, PROBES, PAIRS, SHAPE)
    assert lens.tokens == 8 + 10 + 2 and lens.passes == 1 and lens.lens_rows == 2 * 31 * 20
    generation = job_work("run_generation", CONFIG, PROBES, PAIRS, SHAPE)
    assert generation.steps == 2 * 12 and generation.lens_rows == 2 * 31 * 24  # max_probes: the first two
    # Both directions and four noise samples at every layer x position: 6 runs of 8 tokens per site.
    patching = job_work("run_patching", CONFIG, PROBES, PAIRS, SHAPE)
    assert patching.tokens == 31 * 8 * 6 * 8
    # Attention, MLP and 9 heads of every block at every position, then AtP's passes.
    components = job_work("run_components", CONFIG, PROBES, PAIRS, SHAPE)
    assert components.tokens == 30 * 11 * 8 * 8 + 3 * 30 * 8
    assert job_work("train_tuned_lens", CONFIG, PROBES, PAIRS, SHAPE).tokens == 48 * 128 + 256
    # Experiment 005: 2 tasks x 24 concepts, each 4 lines of 14 tokens, and the patchscope's
    # inspection prompt ("ab?": 1 + 1 tokens) from every layer on, half the blocks on average.
    words = {**CONFIG, "words": {"tasks": [{}, {}], "max_words": 24, "demonstrations": 3}, "patchscope": {"prompt": "ab?"}}
    assert job_work("run_words", words, PROBES, PAIRS, SHAPE).tokens == 48 * (4 * 14 + 2 * 31 // 2)
    assert job_work("run_words", words, PROBES, PAIRS, SHAPE).lens_rows == 3 * 31 * 48
    # The patchscope in 001: every position's inspection prompt run on from every layer.
    with_patchscope = job_work("run_lens", {**words, "lenses": ["logit", "patchscope"]}, PROBES, PAIRS, SHAPE)
    assert with_patchscope.tokens == 20 + 20 * 2 * 31 // 2
    assert job_work("plot_heatmaps", CONFIG, PROBES, PAIRS, SHAPE) is None


def test_a_gpu_job_or_a_model_not_yet_readable_is_not_estimated(tmp_path):
    entry = {"source": "local", "path": str(tmp_path)}
    assert estimate("run_lens", {**entry, "device": "cuda"}, CONFIG, PROBES, PAIRS) is None
    assert estimate("run_lens", entry, CONFIG, PROBES, PAIRS) is None  # no config.json there


def test_the_estimate_grows_with_the_work_and_says_what_it_assumes(monkeypatch, tmp_path):
    import workflow.model.cost as cost

    monkeypatch.setattr(cost, "model_shape", lambda *args: SHAPE)
    monkeypatch.setattr(cost, "cpu_flops", lambda: 1e11)
    entry = {"source": "local", "path": str(tmp_path)}
    short = estimate("run_generation", entry, CONFIG, PROBES, PAIRS)
    longer = estimate("run_generation", entry, {**CONFIG, "generation": {"max_new_tokens": 1000, "max_probes": 2}}, PROBES, PAIRS)
    # 2 FLOP per active parameter per token, and the lens's 2 x 576 x 49152 per layer and position, at 1e11 FLOP/s.
    tokens, rows = 8 + 10 + 2 * 12, 2 * 31 * 2 * 12
    assert short.minutes * 60 == pytest.approx((2 * SHAPE.active * tokens + 2 * 576 * 49152 * rows) / 1e11)
    assert longer.minutes > 50 * short.minutes
    assert "2 probes x 1000 generated tokens" in longer.said and "0.11 B active parameters on PyTorch" in longer.said
    assert "100 GFLOP/s measured here" in longer.said


def test_a_jobs_log_opens_with_its_estimate(tmp_path):
    log = tmp_path / "job.log"

    def main(sm):
        raise UserError("stopped here")

    job = SimpleNamespace(log=[str(log)], rule="run_lens", threads=1, output=[], resources=SimpleNamespace(expected_minutes=42))
    with pytest.raises(SystemExit):
        run_script(job, main)
    logging.getLogger().handlers.clear()
    text = log.read_text()
    assert text.index("rule run_lens is expected to take about 42 min (an estimate") < text.index("stopped here")


def test_llamacpp_on_a_gpu_is_estimated_by_the_lenss_products_alone(monkeypatch, tmp_path):
    import workflow.model.cost as cost

    monkeypatch.setattr(cost, "model_shape", lambda *args: SHAPE)
    monkeypatch.setattr(cost, "cpu_flops", lambda: 1e11)
    entry = {"source": "gguf", "path": str(tmp_path / "m.gguf"), "backend": "llamacpp"}
    on_cpu = estimate("run_lens", entry, CONFIG, PROBES, PAIRS)
    on_gpu = estimate("run_lens", {**entry, "llamacpp": {"n_gpu_layers": 99}}, CONFIG, PROBES, PAIRS)
    lens = 2 * 576 * 49152 * 2 * 31 * 20 / 1e11
    assert on_gpu.minutes * 60 == pytest.approx(lens)
    assert on_cpu.minutes * 60 == pytest.approx(lens + 2 * SHAPE.active * 20 / 1e11)
    assert "its passes on the GPU not counted" in on_gpu.said


def test_the_cpus_rate_is_measured_once_per_machine_and_kept_in_the_cache(monkeypatch, tmp_path):
    """Every dry run and job estimates; the matrix products that measure the rate (about 0.2 s)
    run once per machine, and the figure kept is read back after, in another process too."""
    import json

    from workflow.model import cost

    monkeypatch.setenv("LAYERWISE_LENS_CACHE", str(tmp_path / "cache"))
    cost.cpu_flops.cache_clear()
    measured = cost.cpu_flops()
    assert 1e8 < measured < 1e14
    [entry] = (tmp_path / "cache" / "cpu-flops").glob("*.json")
    kept = json.loads(entry.read_text())
    assert kept["flops"] == measured and kept["machine"][0] and kept["machine"][2] >= 1
    entry.write_text(json.dumps({**kept, "flops": 1.25e11}))  # what another process measured here
    cost.cpu_flops.cache_clear()
    assert cost.cpu_flops() == 1.25e11
    # A cache that cannot be written (a file where its folder would be) still gives a measurement.
    monkeypatch.setenv("LAYERWISE_LENS_CACHE", str(entry))
    cost.cpu_flops.cache_clear()
    assert 1e8 < cost.cpu_flops() < 1e14
    cost.cpu_flops.cache_clear()

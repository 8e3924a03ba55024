"""Models larger than the machine: weights placed by accelerate across devices and disk
(workflow/model/load.py, plan_placement) give the records of the model held whole.

Forced on the CPU with small budgets: the embedded models under a budget of a third of
their weights (most of them read from disk at every forward pass), and the tiny models
for what the lens, the patching experiment and the tuned lens do with a placed model.
"""

from __future__ import annotations

import pytest
import torch

from workflow.base.errors import UserError
from workflow.lens.run import read_probes
from workflow.model.head import OffloadedLinear
from workflow.config.settings import LensSettings
from workflow.lens.session import lens_heads
from workflow.config.schema import parse_size
from workflow.model.load import estimate_memory, load_model, plan_placement

from conftest import PROBES
from pipeline import REPO, prepared_model


def weights_bytes(path) -> int:
    from workflow.model.resources import directory_parameters

    return directory_parameters(path) * 4


def local(path) -> dict:
    return {"source": "local", "path": str(path)}


def budget(limit: int, tmp_path) -> dict:
    return {"max_memory": {"cpu": limit}, "offload_folder": str(tmp_path / "offload")}


@pytest.mark.parametrize(("key", "backend"), [("gemma-3-270m", "bridge"), ("smollm2-135m-instruct", "hooks")])
def test_a_model_under_a_third_of_its_weights_gives_the_records_of_the_model_in_memory(key, backend, tmp_path, tmp_path_factory):
    """The acceptance test: most weights read from disk at each forward pass (Gemma: all
    of them, its 671 MB embedding being more than the budget), the same records and readings."""
    import yaml

    path = prepared_model(key, tmp_path_factory)
    probes = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["probes"]
    settings = LensSettings(positions="all")
    whole = load_model(key, local(path), None, device="cpu", dtype="float32", backend=backend)
    want = read_probes(whole, probes, settings)
    del whole
    limit = weights_bytes(path) // 3
    placed = load_model(key, local(path), None, device="cpu", dtype="float32", backend=backend, placement=budget(limit, tmp_path))
    placement = placed.info["placement"]
    on_disk = placement["weights_bytes_by_device"].get("disk", 0)
    assert on_disk >= weights_bytes(path) - limit, placement["weights_bytes_by_device"]
    assert placement["weights_bytes_by_device"].get("cpu", 0) <= limit
    assert placement["max_memory_bytes"] == {"cpu": limit}
    got = read_probes(placed, probes, settings)
    assert got.rows == want.rows
    assert got.probes == want.probes and got.identity_check == want.identity_check


def test_sizes_are_read_with_their_units_and_bad_ones_name_the_key():
    assert parse_size("300MB", "k") == 300_000_000
    assert parse_size("1.5 GiB", "k") == int(1.5 * 2**30)
    assert parse_size(4096, "k") == 4096
    assert parse_size("512", "k") == 512
    with pytest.raises(UserError, match=r"placement.max_memory.cpu: '3 parsecs' is not a memory size"):
        parse_size("3 parsecs", "placement.max_memory.cpu")


def test_a_model_that_fits_is_not_placed_and_a_budget_places_it(tiny_dirs, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_dirs["llama"])
    estimate = estimate_memory(config, torch.float32)
    assert plan_placement("tiny", config, estimate, "cpu", torch.float32, {"max_memory": {}}) is None
    layer_bytes = sum(p.numel() * 4 for p in load_model("t", local(tiny_dirs["llama"]), None, device="cpu", dtype="float32").backend.hf_model.model.layers[0].parameters())
    embedding_bytes = config.vocab_size * config.hidden_size * 4
    placed = plan_placement("tiny", config, estimate, "cpu", torch.float32,
                            budget(embedding_bytes + layer_bytes + 100, tmp_path))
    assert placed is not None and placed.main_device == "cpu"
    assert set(placed.device_map.values()) == {"cpu", "disk"}
    assert placed.offload_folder == str(tmp_path / "offload" / "tiny")
    with pytest.raises(UserError, match="names cuda devices but the model runs on cpu"):
        plan_placement("tiny", config, estimate, "cpu", torch.float32, {"max_memory": {"cuda:0": "1GB"}})


@pytest.fixture(scope="module", params=["bridge", "hooks"])
def placed_tiny(request, tiny_dirs, tmp_path_factory):
    """The tiny Gemma 3 (tied unembedding) with everything on disk, and held whole."""
    folder = tmp_path_factory.mktemp("offload")
    entry = local(tiny_dirs["gemma3"])
    whole = load_model("tiny-gemma3", entry, None, device="cpu", dtype="float32", backend=request.param)
    placed = load_model("tiny-gemma3", entry, None, device="cpu", dtype="float32", backend=request.param,
                        placement={"max_memory": {"cpu": 1}, "offload_folder": str(folder)})
    return whole, placed


def test_the_lens_reads_an_offloaded_unembedding_when_it_decodes(placed_tiny):
    whole, placed = placed_tiny
    assert set(placed.info["placement"]["weights_bytes_by_device"]) == {"disk"}
    assert placed.info["placement"]["lens_unembedding"] == "read when decoding"
    assert isinstance(placed.backend.unembed, OffloadedLinear)
    assert placed.backend.hf_model.get_output_embeddings().weight.device.type == "meta"  # the model's own stays offloaded
    head, _ = lens_heads(placed, LensSettings())
    weight, _ = head.linear()
    assert head.linear()[0] is weight  # one read shared while held
    expected = lens_heads(whole, LensSettings()).lens.linear()[0]
    assert torch.equal(weight, expected)
    assert read_probes(placed, PROBES, LensSettings(top_k=3)) == read_probes(whole, PROBES, LensSettings(top_k=3))


def test_patching_a_placed_model_gives_the_records_of_the_model_in_memory(placed_tiny):
    from workflow.experiments.exp002.patching import PatchingSettings
    from workflow.experiments.exp002.run import run_patching

    pair = {"id": "germany-france", "clean": "The capital of Germany is", "clean_answer": " Berlin",
            "corrupted": "The capital of France is", "corrupted_answer": " Paris"}
    whole, placed = placed_tiny
    settings = PatchingSettings(batch_size=16, trace_samples=2)
    assert run_patching(placed, [pair], settings, LensSettings()) == run_patching(whole, [pair], settings, LensSettings())


def test_a_tuned_lens_trained_in_memory_loads_on_the_placed_model(placed_tiny):
    """The tuned lens names the unembedding it was trained for by a digest of its tensors;
    an offloaded unembedding, read from disk, has the same digest."""
    from workflow.lens.tuned import unembedding_sha256

    whole, placed = placed_tiny
    _, whole_head = lens_heads(whole, LensSettings())
    _, placed_head = lens_heads(placed, LensSettings())
    assert unembedding_sha256(placed_head) == unembedding_sha256(whole_head)


def test_the_json_records_the_placement(tiny_dirs, tmp_path):
    from workflow.lens.session import model_metadata

    placed = load_model("tiny-llama", local(tiny_dirs["llama"]), None, device="cpu", dtype="float32", backend="hooks",
                        placement=budget(400_000, tmp_path))
    recorded = model_metadata(placed)["placement"]
    assert recorded["max_memory_bytes"] == {"cpu": 400_000}
    assert recorded["device_map"]["model.embed_tokens"] == "cpu" and recorded["device_map"]["model.norm"] == "disk"
    assert recorded["weights_bytes_by_device"]["cpu"] <= 400_000
    assert sum(recorded["weights_bytes_by_device"].values()) == weights_bytes(tiny_dirs["llama"])
    whole = load_model("tiny-llama", local(tiny_dirs["llama"]), None, device="cpu", dtype="float32", backend="hooks")
    assert "placement" not in model_metadata(whole)


def test_a_cpu_budget_lowers_what_the_lens_job_asks_a_scheduler_for(tiny_dirs):
    from workflow.model.resources import lens_resources

    entry = local(tiny_dirs["llama"])
    whole = lens_resources(entry, {"device": "cpu"})["mem_mb"]
    placed = lens_resources(entry, {"device": "cpu", "placement": {"max_memory": {"cpu": "1KB"}}})["mem_mb"]
    own = lens_resources({**entry, "placement": {"max_memory": {"cpu": 1000}}}, {"device": "cpu"})["mem_mb"]
    assert placed == own < whole


def test_an_offload_folder_that_cannot_be_written_is_refused_naming_the_key(tiny_dirs, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_dirs["llama"])
    estimate = estimate_memory(config, torch.float32)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"placement.offload_folder: .*cannot be written"):
        plan_placement("tiny", config, estimate, "cpu", torch.float32,
                       {"max_memory": {"cpu": 1}, "offload_folder": str(blocker / "offload")})

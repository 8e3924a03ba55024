"""The multiply-adds per token that bench/llamacpp_backend.py counts from a file's shapes
(the lens's arithmetic against the model's, bench/README.md), against the counts worked out
by hand from each model's published dimensions."""

import sys

import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from llamacpp_backend import file_multiply_adds, locate_gguf, multiply_adds  # noqa: E402
from scout_width import SCOUT, tensor_table  # noqa: E402


def test_smollm2s_count_is_its_parameters_less_its_norms(tmp_path):
    """SmolLM2-135M: 30 layers of width 576 (9 query and 3 key-value heads of 64, an MLP of
    1536) and a 49,152-token vocabulary whose embedding is also its head: 134,515,008
    parameters, of which 35,136 are norm weights (no product) and the embedding a lookup
    that the tied head then multiplies once."""
    entry = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"]["smollm2-135m-instruct"]
    model, lens = file_multiply_adds(locate_gguf("smollm2-135m-instruct", entry, tmp_path))
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536
    embedding = 49152 * 576
    assert 30 * per_layer + embedding == 134_515_008 - 35_136
    assert model == 30 * per_layer + embedding
    assert lens == 31 * embedding


def test_scouts_count_takes_one_routed_expert_of_sixteen():
    """Llama 4 Scout, 48 layers: attention (40 query and 8 key-value heads of 128), a shared
    expert and one of 16 routed experts of 8192, the router, and the head of 202,048 tokens:
    the 17 B active parameters it is named for, less the embedding's lookup."""
    shapes = {name: shape for name, _, shape, _ in tensor_table(48)}
    model, lens = multiply_adds(shapes, 48, 1 / SCOUT["experts"])
    attention = 5120 * 5120 * 2 + 5120 * 1024 * 2
    expert = 3 * 5120 * 8192
    head = 202048 * 5120
    assert model == 48 * (attention + 2 * expert + 5120 * 16) + head
    assert 16.0e9 < model + head < 17.5e9  # with the embedding's lookup: Scout's "17B active"
    assert lens == 49 * head

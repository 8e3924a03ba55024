"""Batched probes on real models: a probe's records and its reading (``workflow.lens.run``,
what every experiment's JSON says of it) are the same alone or in any batch, and beside any
other probes. The tiny random models do not show the effects this guards against (a mutation
removing either safeguard passes on them), so this runs the embedded models, prepared from
their PyPI packages: Gemma-3-270M through the TransformerBridge (whose eager attention rounds
a lone sequence differently: a forward pass of one padded length always holds as many sequences) and SmolLM2-135M
through forward hooks on transformers' SDPA attention (which rounds differently with the
padded length: every probe is padded to its canonical length). What holds on any processor,
that no product's shape depends on the other probes, is tests/test_probe_invariance.py's."""

import pytest

from workflow.experiments.exp001.run import run_lens
from workflow.lens.run import read_probes
from workflow.config.settings import LensSettings
from workflow.config.probes import load
from workflow.lens.records import rounded

from pipeline import REPO
from pipeline import prepared_model as prepared
from test_probe_invariance import PROBES, assert_each_probe_alone


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


@pytest.mark.parametrize("real_model", [("smollm2-135m-instruct", "hooks")], indirect=True, ids=lambda p: p[0])
def test_a_probe_s_records_and_summary_do_not_depend_on_the_other_probes_on_a_real_model(real_model):
    # Experiment 001's records and JSON entries of the probes a set shares with the same set
    # plus one probe, minus one (three left: the model's logits at the last position then
    # came from a product of 3 rows, not 4) and reversed: the same bytes. Four probes of one
    # padded length: one forward pass each time.
    settings = LensSettings(top_k=3, positions="last")
    short = PROBES[:4]

    assert_each_probe_alone(lambda probes: run_lens(real_model, probes, settings, None, 32), short)


def test_a_forward_pass_holds_about_forward_tokens_and_a_batch_whole_passes():
    # Short probes fill passes of 16 sequences, long ones fewer (a lone 20-token probe pays
    # for 8 filler rows, not 15); a batch of one padded length is a whole number of passes
    # but for the group's last, so no pass but the last is part filler.
    from types import SimpleNamespace

    from workflow.lens.run import batches
    from workflow.model.backends import FILLER, forward_rows, padded_batch

    assert [forward_rows(n) for n in (4, 8, 12, 16, 20, 24, 100, 192, 4000)] == [16, 16, 16, 12, 9, 8, 1, 1, 1]
    batch = padded_batch([[7] * 17, [8] * 18], 20, "cpu")
    assert batch["input_ids"].shape == (9, 20)
    assert (batch["input_ids"][2:] == FILLER).all() and batch["attention_mask"][1].tolist() == [1] * 18 + [0] * 2
    with pytest.raises(ValueError, match="10 sequences do not fit a forward pass of 9 of length 20"):
        padded_batch([[7] * 17] * 10, 20, "cpu")

    items = [SimpleNamespace(sequence=[1] * n) for n in [14] * 30 + [6] * 20 + [19] * 2]
    found = [(length, len(batch)) for length, batch in batches(items, 32)]
    assert found == [(8, 20), (16, 24), (16, 6), (20, 2)]


def test_the_lens_reproduces_the_model_s_logits_exactly_whatever_a_pass_holds(real_model):
    # Prompts of over 48 tokens: passes of 3 sequences and of 2, not 16. The model's own logits
    # are computed in a product of FORWARD_ROWS rows whatever the pass holds, so they round as
    # the lens's products do (in products of 1-3 rows they differed by 1e-4 on an AMD EPYC).
    from workflow.model.backends import canonical_length, forward_rows

    cities = ("Paris is the capital of France, Berlin of Germany, Madrid of Spain, Lisbon of Portugal, Vienna of "
              "Austria, Warsaw of Poland, Prague of Czechia, Athens of Greece, Dublin of Ireland, Oslo of Norway, ")
    probes = [
        {"id": "rome", "prompt": cities + "and the capital of Italy is", "answer": " Rome"},
        {"id": "bern", "prompt": cities + "Stockholm of Sweden, Helsinki of Finland, Budapest of Hungary, Bucharest of "
                                          "Romania, Sofia of Bulgaria, Copenhagen of Denmark, and the capital of Switzerland is",
         "answer": " Bern"},
    ]
    read = read_probes(real_model, probes, LensSettings(top_k=3, positions="last"), None, 32)
    assert sorted(forward_rows(canonical_length(len(p["input_ids"]))) for p in read.probes) == [2, 3]
    assert read.identity_check["max_abs_logit_diff"] == 0.0

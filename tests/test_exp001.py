"""Experiment 001's own figures against independent computations: the answer's scores at the
last layer (the whole answer, teacher-forced), the final probabilities, and the tuned lens's
calibration; and the whole of 001's JSON the same in a batch of any size. The lens run it is
built on is tested in tests/test_lens_identity.py."""

import pytest
import torch

from reference import reference_layers
from workflow.experiments.exp001.run import run_lens
from workflow.config.settings import LensSettings
from workflow.lens.session import lens_heads

ARCHS = ["llama", "gemma3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_final_probabilities_match_plain_transformers(arch, loaded, tiny_dirs, probes):
    model = loaded[arch]
    summary, _ = run_lens(model, probes[:1], LensSettings(top_k=3))
    _, hf_logits, ids = reference_layers(tiny_dirs[arch], probes[0]["prompt"])
    final = hf_logits[-1].softmax(-1)
    answer = summary["probes"][0]["answer_token_id"]
    assert summary["probes"][0]["input_ids"] == ids
    assert summary["probes"][0]["final_top1_prob"] == pytest.approx(final.max().item(), abs=1e-5)
    assert summary["probes"][0]["final_answer_prob"] == pytest.approx(final[answer].item(), abs=1e-5)
    assert summary["probes"][0]["final_answer_rank"] == int((final > final[answer]).sum()) + 1


@pytest.mark.parametrize("arch", ARCHS)
def test_multi_token_answer_is_scored_whole_by_teacher_forcing(arch, loaded, tiny_dirs):
    """Per layer the records follow the answer's first token; the JSON scores the whole
    answer: its log-probability token by token and whether greedy decoding gives it, against
    plain transformers run on the prompt followed by the answer's tokens."""
    from transformers import AutoModelForCausalLM

    model = loaded[arch]
    probe = {"id": "multi", "prompt": "The capital of Germany is", "answer": " Berlinzz Köln"}
    pieces = model.tokenizer(probe["answer"], add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    summary, rows = run_lens(model, [probe], LensSettings(positions="last"))
    record = summary["probes"][0]
    assert record["answer_token_id"] == pieces[0] and record["answer_token_ids"] == pieces
    assert {r["answer_token"] for r in rows} == {model.tokenizer.decode([pieces[0]])}
    assert "first token" in summary["answer_scoring"]["records"]
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=torch.float32)
    prompt = model.tokenizer(probe["prompt"])["input_ids"]
    with torch.no_grad():
        logprobs = hf(torch.tensor([prompt + pieces])).logits[0].double().log_softmax(-1)
    steps = [logprobs[len(prompt) - 1 + i] for i in range(len(pieces))]
    expected = sum(float(step[t]) for step, t in zip(steps, pieces))
    assert abs(record["answer_logprob"] - expected) <= 1e-4
    assert record["answer_greedy"] == all(int(step.argmax()) == t for step, t in zip(steps, pieces))
    assert abs(record["final_answer_prob"] - float(steps[0][pieces[0]].exp())) <= 1e-5



BATCH_PROBES = [
    {"id": "p1", "prompt": "The capital of Germany is", "answer": " Berlin"},
    {"id": "p2", "prompt": "Berlin is the capital of", "answer": " Germany and more"},
    {"id": "p3", "prompt": "Paris", "answer": " France"},
    {"id": "p4", "prompt": "The official currency of the United Kingdom is the", "answer": " pound sterling"},
    {"id": "p5", "prompt": "Tokyo is in", "answer": " Japan"},
    {"id": "p6", "prompt": "The largest city in Australia is", "answer": " Sydney"},
    {"id": "p7", "prompt": "One two three four five six seven eight nine ten eleven", "answer": " twelve"},
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("positions", ["all", "last"])
def test_batched_records_equal_one_probe_at_a_time(arch, positions, loaded):
    """Every record, and every per-probe JSON figure but the identity check's float-noise
    differences, is the same whether a probe runs alone or in a batch of any size: padded,
    with an attention mask, its last positions decoded beside other probes'."""
    from tiny import random_translators
    from workflow.lens.records import rounded

    model = loaded[arch]
    tuned = random_translators(model, seed=0, weight_std=0.02, bias_std=0.02)
    settings = LensSettings(top_k=3, positions=positions)
    runs = {size: run_lens(model, [dict(p) for p in BATCH_PROBES], settings, tuned, size) for size in (1, 3, 64)}

    def per_probe(summary):
        return rounded([{k: v for k, v in p.items() if k != "identity_check"} for p in summary["probes"]])

    for size in (3, 64):
        assert runs[size][1] == runs[1][1]
        assert per_probe(runs[size][0]) == per_probe(runs[1][0])
        assert rounded(runs[size][0]["tuned_calibration"]) == rounded(runs[1][0]["tuned_calibration"])
    assert {r["lens"] for r in runs[1][1]} == {"logit", "tuned"}
    # The tuned lens's calibration bins against plain torch: each probe's last position,
    # unpadded, through the translator, the final norm and the unembedding, softmax at T.
    summary = runs[64][0]
    head, _ = lens_heads(model, settings)
    temperatures = summary["temperatures"]
    expected_sums = torch.zeros(model.n_layers + 1, len(temperatures), 3, dtype=torch.float64)
    for probe in summary["probes"]:
        residuals, _ = model.backend.capture(probe["input_ids"], "last")
        for layer in range(model.n_layers + 1):
            with torch.no_grad():
                z = head.logits(tuned(residuals[layer], layer))[0].double()
            for j, t in enumerate(temperatures):
                p = torch.softmax(z / t, -1)
                expected_sums[layer, j] += torch.tensor([1.0, float(p.max()), float(int(p.argmax()) == probe["answer_token_id"])])
    table = torch.tensor(summary["tuned_calibration"]["bins"], dtype=torch.float64).sum(2)  # over bins
    assert torch.allclose(table, expected_sums, atol=1e-4)

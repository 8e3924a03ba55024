"""The lens on generation (workflow/generation.py): the trace of a reply against experiment
001's records of the prompt extended by the generated tokens, sampling, stopping."""

import pytest
import torch

from conftest import PROBES
from workflow import tuned
from workflow.exp001 import run as exp001_run
from workflow.generation import LensGenerator, stop_token_ids
from workflow.lens_setup import LensSettings

ANSWER_FREE = ("top1_token", "top1_prob", "topk_tokens", "topk_probs", "entropy", "kl_to_final")
ANSWER = ("answer_token", "answer_prob", "answer_rank")
# The generated run decodes residuals from the key-value cache, one position per forward;
# 001 runs the whole sequence at once: the same numbers up to float32 summation order.
ABS = 2e-5


def random_tuned(model, seed=5):
    gen = torch.Generator().manual_seed(seed)
    lens = tuned.TunedLens(model.n_layers, model.d_model)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=gen) * 0.05)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=gen) * 0.5)
    return lens


def lens_records_of(model, sequences, tuned_lens, monkeypatch):
    """Experiment 001's run on token sequences: for each (ids, answer id), the records at
    its last position. 001 tokenises text; here it is handed the ids (the generated tokens
    need not survive a decode and re-encode)."""
    monkeypatch.setattr(exp001_run, "tokenize_probe", lambda tokenizer, probe: (probe["ids"], probe["answer_ids"]))
    probes = [{"id": f"step-{i}", "prompt": "x", "answer": "x", "ids": ids, "answer_ids": [answer]}
              for i, (ids, answer) in enumerate(sequences)]
    _, rows = exp001_run.run_lens(model, probes, LensSettings(positions="last", top_k=3), tuned_lens, batch_size=3)
    return {(r["probe"], r["lens"], r["layer"]): r for r in rows}


def assert_row_equal(got, want):
    for column in ANSWER_FREE + ANSWER:
        if column in ("top1_token", "topk_tokens", "answer_token", "answer_rank"):
            assert got[column] == want[column], column
        elif column == "topk_probs":
            assert got[column] == pytest.approx(want[column], abs=ABS), column
        else:
            assert got[column] == pytest.approx(want[column], abs=ABS), column


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_greedy_trace_equals_001_records_of_the_extended_prompt(arch, loaded, monkeypatch):
    model = loaded[arch]
    lens = random_tuned(model)
    generator = LensGenerator(model, LensSettings(top_k=3), lens, pending=3)
    prompt = model.tokenizer(PROBES[0]["prompt"])["input_ids"]
    seen = []
    reply = generator.generate(prompt, 12, stop_ids=set(), on_trace=lambda t: seen.append(t.index))
    assert seen == list(range(12)) and len(reply.tokens) == 12 and reply.stopped == "length"
    generated = reply.token_ids
    # Greedy: every token is the model's own top-1, so the lens's last layer has it at rank 1.
    for trace in reply.tokens:
        assert trace.stats["logit"][-1].answer_rank == 1
        assert trace.stable_top1_layer("logit") is not None and trace.first_top1_layer("logit") <= model.n_layers
    sequences = [(prompt + generated[:i], generated[i]) for i in range(len(generated))]
    want = lens_records_of(model, sequences, lens, monkeypatch)
    rows = generator.records(reply, "turn")
    assert len(rows) == 12 * 2 * (model.n_layers + 1)
    for row in rows:
        i = row["position"]
        assert row["input_token"] == generator.names(sequences[i][0][-1])
        assert_row_equal(row, want[(f"step-{i}", row["lens"], row["layer"])])
    # The first layer where each token is top-1 (rank 1; names can repeat across ids), from 001's rows.
    for trace in reply.tokens:
        for lens_name in ("logit", "tuned"):
            ranks = [want[(f"step-{trace.index}", lens_name, layer)]["answer_rank"] for layer in range(model.n_layers + 1)]
            assert trace.first_top1_layer(lens_name) == ranks.index(1)


def test_trace_does_not_depend_on_how_steps_were_batched(loaded):
    model = loaded["llama"]
    prompt = model.tokenizer(PROBES[1]["prompt"])["input_ids"]
    one = LensGenerator(model, LensSettings(top_k=3), pending=1).generate(prompt, 9, stop_ids=set())
    many = LensGenerator(model, LensSettings(top_k=3), pending=8)
    # Steps queued faster than the lens decodes: force them into one decoding.
    items = []
    original = many.decode
    many.decode = lambda batch: items.append(len(batch)) or original(batch)
    reply = many.generate(prompt, 9, stop_ids=set())
    assert one.token_ids == reply.token_ids
    assert LensGenerator(model, LensSettings(top_k=3)).records(one, "a") == many.records(reply, "a")
    assert sum(items) == 9


def test_sampling_is_seeded_and_stops_at_a_stop_token(loaded):
    model = loaded["gemma3"]
    generator = LensGenerator(model, LensSettings(top_k=3))
    prompt = model.tokenizer(PROBES[2]["prompt"])["input_ids"]
    a = generator.generate(prompt, 10, temperature=1.5, seed=3, stop_ids=set())
    b = generator.generate(prompt, 10, temperature=1.5, seed=3, stop_ids=set())
    c = generator.generate(prompt, 10, temperature=1.5, seed=4, stop_ids=set())
    greedy = generator.generate(prompt, 10, stop_ids=set())
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids or a.token_ids != greedy.token_ids
    # Stop at the third greedy token: it is generated, traced, and nothing after it.
    stop = greedy.token_ids[2]
    first = greedy.token_ids.index(stop)
    stopped = generator.generate(prompt, 10, stop_ids={stop})
    assert stopped.stopped == "stop" and stopped.token_ids == greedy.token_ids[: first + 1]
    assert model.tokenizer.eos_token_id in stop_token_ids(model)


def test_a_lens_that_does_not_reproduce_the_model_fails_the_reply(loaded):
    from workflow.lens_setup import LensIdentityError

    model = loaded["llama"]
    generator = LensGenerator(model, LensSettings(top_k=3))
    generator.heads.reference.postprocess = lambda z: z * 1.5  # a missed logit step
    prompt = model.tokenizer(PROBES[0]["prompt"])["input_ids"]
    with pytest.raises(LensIdentityError, match="generated token 0"):
        generator.generate(prompt, 4, stop_ids=set())

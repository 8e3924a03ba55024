"""The lens on generation (workflow/lens/generation.py): the trace of a reply against experiment
001's records of the prompt extended by the generated tokens, sampling, stopping."""

import pytest

from conftest import PROBES
from tiny import random_translators
from workflow.lens import run as lens_run
from workflow.lens.generation import LensGenerator, stop_token_ids
from workflow.config.settings import LensSettings

ANSWER_FREE = ("top1_token", "top1_prob", "topk_tokens", "topk_probs", "entropy", "kl_to_final")
ANSWER = ("answer_token", "answer_prob", "answer_rank")
# The generated run decodes residuals from the key-value cache, one position per forward;
# 001 runs the whole sequence at once: the same numbers up to float32 summation order.
ABS = 2e-5


def lens_records_of(model, sequences, tuned_lens, monkeypatch):
    """The lens run of experiment 001 (``workflow.lens.run``) on token sequences: for each
    (ids, answer id), the records at its last position. The run tokenises text; here it is
    handed the ids (the generated tokens need not survive a decode and re-encode)."""
    monkeypatch.setattr(lens_run, "tokenize_probe", lambda tokenizer, probe: (probe["ids"], probe["answer_ids"]))
    probes = [{"id": f"step-{i}", "prompt": "x", "answer": "x", "ids": ids, "answer_ids": [answer]}
              for i, (ids, answer) in enumerate(sequences)]
    rows = lens_run.read_probes(model, probes, LensSettings(positions="last", top_k=3), tuned_lens, batch_size=3).rows
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
    lens = random_translators(model)
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


def test_the_lens_waits_for_a_full_decoding_unless_the_model_is_the_slower(loaded):
    """A decoding costs the same for one step as for ``pending``: the lens thread waits for
    ``pending`` steps (or the reply's end) before its first decoding, and after it, for at
    most as long as the last decoding took, so a slow model's traces are not held back."""
    import time

    model = loaded["llama"]
    prompt = model.tokenizer(PROBES[1]["prompt"])["input_ids"]
    generator = LensGenerator(model, LensSettings(top_k=3), pending=4)
    decodings = []
    decode = generator.decode
    generator.decode = lambda batch: decodings.append(len(batch)) or decode(batch)
    fast = generator.generate(prompt, 3, stop_ids=set())
    assert decodings == [3]  # the reply ended before four steps came: one decoding
    decodings.clear()
    step = model.backend.step

    def slow_step(tokens, cache):  # a model far slower than the lens's decoding of a tiny vocabulary
        time.sleep(0.4)
        return step(tokens, cache)

    model.backend.step = slow_step
    try:
        reply = generator.generate(prompt, 7, stop_ids=set())
    finally:
        model.backend.step = step
    assert decodings[0] == 4 and sum(decodings) == 7 and decodings[1:] == [1, 1, 1]
    assert reply.token_ids[:3] == fast.token_ids


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
    from workflow.lens.session import LensIdentityError

    model = loaded["llama"]
    generator = LensGenerator(model, LensSettings(top_k=3))
    generator.heads.reference.postprocess = lambda z: z * 1.5  # a missed logit step
    prompt = model.tokenizer(PROBES[0]["prompt"])["input_ids"]
    with pytest.raises(LensIdentityError, match="generated token 0"):
        generator.generate(prompt, 4, stop_ids=set())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_the_backend_setting_governs_generation(arch, tiny_dirs):
    """Generation reads its residuals through the run's backend: with ``backend: bridge``
    every step goes through the bridge's hook points (one bridge call per token), with
    ``hooks`` through forward hooks on the model's layers; the replies and their traces agree."""
    from workflow.model.load import load_model

    entry = {"source": "local", "path": str(tiny_dirs[arch])}
    bridged = load_model(f"tiny-{arch}", entry, None, device="cpu", dtype="float32", backend="bridge")
    hooked = load_model(f"tiny-{arch}", entry, None, device="cpu", dtype="float32", backend="hooks")
    assert (bridged.backend.name, hooked.backend.name) == ("transformer_bridge", "forward_hooks")
    calls = []
    bridge = bridged.backend.bridge
    original = bridge.run_with_hooks
    bridge.run_with_hooks = lambda *args, **kwargs: calls.append(kwargs["fwd_hooks"]) or original(*args, **kwargs)
    prompt = bridged.tokenizer(PROBES[0]["prompt"])["input_ids"]
    via_bridge = LensGenerator(bridged, LensSettings(top_k=3)).generate(prompt, 6, stop_ids=set())
    via_hooks = LensGenerator(hooked, LensSettings(top_k=3)).generate(prompt, 6, stop_ids=set())
    assert len(calls) == 6  # one forward pass per token, through the bridge
    assert {name for name, _ in calls[0]} == {"blocks.0.hook_resid_pre"} | {
        f"blocks.{i}.hook_resid_post" for i in range(bridged.n_layers)
    }
    assert via_bridge.token_ids == via_hooks.token_ids
    for a, b in zip(via_bridge.tokens, via_hooks.tokens):
        assert [s.topk_ids for s in a.stats["logit"]] == [s.topk_ids for s in b.stats["logit"]]
        assert [s.answer_prob for s in a.stats["logit"]] == pytest.approx([s.answer_prob for s in b.stats["logit"]], abs=ABS)

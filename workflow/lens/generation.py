"""The lens on generation: every generated token decoded at every layer, as it is made.

``LensGenerator`` generates with the model's own key-value cache (one position per step
after the prompt) and reads, at each step, the residual stream of the new position only,
through the run's backend (``Backend.step``: the bridge's hook points or forward hooks on
the decoder layers; the same residuals as experiment 001's: layer 0 entering the first
block, layer k after block k). The lens statistics of a step are
computed in a second thread while the model computes the next steps; the thread decodes
``pending`` steps at once (fewer at the end of the reply, or where the model is slower than
the lens), so the unembedding is read once for several tokens. The statistics of a token do
not depend on which others shared its decoding (``lens_statistics(..., separate_positions=True)``:
every product of a fixed shape): the trace of a reply is the same however fast the lens kept up.

A token's trace is 001's records for the position that predicted it, with the generated
token in place of a probe's answer: the records of a greedy reply equal experiment 001's
records of the prompt extended by the tokens generated before each one (tests/test_generation.py).
At each step the lens at the last layer is checked against the model's own logits, as in
001.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from workflow.config.settings import LensSettings
from workflow.lens.readout import DECODE_POSITIONS, FinalLogits, RowStats
from workflow.lens.records import in_record_order, lens_row
from workflow.lens.session import LensSession, answer_layers
from workflow.model.backends import input_device
from workflow.model.load import LoadedModel

log = logging.getLogger(__name__)

# Steps the lens thread decodes together at most: decoding several steps together keeps
# generation near its plain rate (bench/generation.py; bench/README.md). The lens decodes
# steps DECODE_POSITIONS at a time whatever their number (a fixed shape), so as many.
PENDING = DECODE_POSITIONS


@dataclass
class TokenTrace:
    """One generated token, decoded at every layer of the position that predicted it."""

    index: int  # 0 for the first generated token
    token_id: int
    input_id: int  # the token at the position that predicted it (the prompt's last for index 0)
    model_prob: float  # the model's own probability of the token (its logits, temperature 1)
    stats: dict[str, list[RowStats]]  # per lens ("logit", "tuned"), one per layer 0..L
    identity: dict[str, float]  # the lens at the last layer against the model's logits

    def first_top1_layer(self, lens: str = "logit") -> int | None:
        """The first layer where this token is the lens's top-1."""
        return answer_layers([s.topk_ids[0] for s in self.stats[lens]], self.token_id)[0]

    def stable_top1_layer(self, lens: str = "logit") -> int | None:
        """The layer from which it stays the lens's top-1 up to the last."""
        return answer_layers([s.topk_ids[0] for s in self.stats[lens]], self.token_id)[1]


@dataclass
class Reply:
    prompt_ids: list[int]
    tokens: list[TokenTrace] = field(default_factory=list)
    stopped: str = "length"  # "length" (max_new_tokens reached) or "stop" (a stop token)
    seconds: float = 0.0

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]


def stop_token_ids(model: LoadedModel) -> set[int]:
    """The model's end-of-sequence ids: its generation config's (one or several: an instruct
    model's end of turn) and its tokenizer's."""
    ids: set[int] = set()
    config = getattr(model.backend.hf_model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), model.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


class LensGenerator(LensSession):
    """Generates from one loaded model with the lens on every new token."""

    def __init__(self, model: LoadedModel, settings: LensSettings, tuned=None, pending: int = PENDING):
        super().__init__(model, settings, tuned)
        self.pending = pending

    # ------------------------------------------------------------------ the model's side

    # more than 6 parameters: a generation's settings, each with its default, and two optional callbacks
    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        stop_ids: set[int] | None = None,
        on_token: Callable[[int, int], None] | None = None,
        on_trace: Callable[[TokenTrace], None] | None = None,
    ) -> Reply:
        """Generate up to ``max_new_tokens`` after ``prompt_ids``: greedily at temperature 0,
        else sampled from the model's probabilities at ``temperature`` with a generator
        seeded by ``seed``. Stops after a token of ``stop_ids`` (default: the model's
        end-of-sequence ids), which is traced too. ``on_token(index, id)`` is called as each
        token is chosen, ``on_trace(trace)`` as its lens statistics are ready (both in the
        calling thread, in order)."""
        # Kept as one function: the model's loop, the lens thread and the delivery of traces
        # share the two queues, the cache and the hooks' buffers, and start and stop together.
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        stop_ids = stop_token_ids(self.model) if stop_ids is None else stop_ids
        hf = self.model.backend.hf_model
        device = input_device(hf)
        generator = torch.Generator().manual_seed(seed)
        reply = Reply(list(prompt_ids))
        work: queue.Queue = queue.Queue()
        done: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._lens_worker, args=(work, done), name="lens", daemon=True)
        started = time.perf_counter()
        traced: dict[int, TokenTrace] = {}

        def deliver(block: bool) -> None:
            while True:
                try:
                    item = done.get(block=block)
                except queue.Empty:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    return
                for trace in item:
                    traced[trace.index] = trace
                    if on_trace is not None:
                        on_trace(trace)

        worker.start()
        try:
            # Each step through the backend (the bridge's hook points or the model's layers):
            # the last position's residual at every layer, and the model's logits there.
            cache = self.model.backend.new_cache(len(prompt_ids) + max_new_tokens)
            tokens = torch.tensor([list(prompt_ids)], device=device)
            previous = int(prompt_ids[-1])
            with torch.no_grad():
                for index in range(max_new_tokens):
                    residuals, logits = self.model.backend.step(tokens, cache)
                    chosen = self._choose(logits, temperature, generator)
                    work.put((index, chosen, previous, residuals, logits))
                    if on_token is not None:
                        on_token(index, chosen)
                    deliver(block=False)
                    previous = chosen
                    if chosen in stop_ids:
                        reply.stopped = "stop"
                        break
                    tokens = torch.tensor([[chosen]], device=device)
        finally:
            work.put(None)
        deliver(block=True)
        worker.join()
        reply.tokens = [traced[i] for i in sorted(traced)]
        reply.seconds = time.perf_counter() - started
        return reply

    @staticmethod
    def _choose(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
        if temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.double().cpu() / temperature, -1)
        return int(torch.multinomial(probs, 1, generator=generator))

    # ------------------------------------------------------------------ the lens's side

    def _lens_worker(self, work: queue.Queue, done: queue.Queue) -> None:
        # A decoding costs the same for one step as for ``pending`` (a fixed shape), so the
        # thread waits for ``pending`` steps before it decodes: until the reply ends, or, once
        # a decoding has been timed, for as long as the last one took after its first step
        # came (where the model is the slower, the lens then waits about half the time
        # instead of decoding one step for the price of ``pending`` without pause).
        try:
            finished, took = False, None
            while not finished:
                item = work.get()
                if item is None:
                    break
                items, first = [item], time.perf_counter()
                while len(items) < self.pending:
                    try:
                        item = work.get(timeout=None if took is None else max(0.0, first + took - time.perf_counter()))
                    except queue.Empty:
                        break
                    if item is None:
                        finished = True
                        break
                    items.append(item)
                started = time.perf_counter()
                with torch.no_grad():
                    done.put(self.decode(items))
                took = time.perf_counter() - started
            done.put(None)
        except BaseException as error:  # handed to the generating thread, which raises it
            done.put(error)

    def decode(self, items: list[tuple[int, int, int, torch.Tensor, torch.Tensor]]) -> list[TokenTrace]:
        """Lens statistics of steps (index, chosen id, input id, residuals [L+1, d], model
        logits [V]), decoded together."""
        residuals = torch.stack([r for _, _, _, r, _ in items], 1)  # [L+1, k, d]
        answers = torch.tensor([chosen for _, chosen, _, _, _ in items])
        per_lens: dict[str, list[list[RowStats]]] = {}
        final = FinalLogits(list(range(len(items))))
        for lens in self.lenses:
            rows: list[list[RowStats]] = [[] for _ in items]
            for stats in self.statistics(residuals, answers, lens, separate_positions=True, final=final):
                rows[stats.position].append(stats)
            per_lens[lens.name] = [sorted(r, key=lambda s: s.layer) for r in rows]
        # The lens's own last-layer logits against the model's; the backend's bound PENDING
        # rows to a product: a fixed shape, of the size of a full decode here (one product for
        # the steps decoded together, not one a step).
        deviations = self.check_identity(residuals[-1], torch.stack([logits for *_, logits in items]),
                                         [f"generated token {index}" for index, *_ in items], PENDING, final.logits)
        traces = []
        for k, ((index, chosen, input_id, _, model_logits), deviation) in enumerate(zip(items, deviations)):
            model_prob = float(torch.softmax(model_logits.double(), -1)[chosen])
            traces.append(TokenTrace(index, chosen, input_id, model_prob, {n: per_lens[n][k] for n in per_lens}, deviation))
        return traces

    # ------------------------------------------------------------------ records

    def records(self, reply: Reply, probe: str) -> list[dict[str, Any]]:
        """Experiment 001's record columns for every generated token x lens x layer:
        ``position`` is the generated index, ``input_token`` the token at the predicting
        position, ``answer_*`` the generated token."""
        rows = []
        for trace in reply.tokens:
            token, input_token = self.names(trace.token_id), self.names(trace.input_id)
            for lens, stats in trace.stats.items():
                rows += [lens_row(self.model.key, probe, lens, s, trace.index, input_token, token, self.names) for s in stats]
        return in_record_order(rows)

"""A probe's outputs do not depend on the other probes: adding, removing or reordering probes
leaves every other probe's records (the CSV rows, byte for byte) and its JSON entry the same.

A matrix product's rows round according to the product's whole shape (the BLAS picks its
kernel and blocking from it), and which shapes make a difference depends on the processor:
on this one (AMD EPYC, MKL) only products of 1, 2-3 and 4 or more rows differ, on an Intel
Xeon a probe's records changed when a ninth probe joined eight of its padded length. So two
kinds of test: the outputs compared byte for byte (what this processor shows), and every
matrix product the runs compute recorded with its shape: a run on a probe set may compute only
products of the shapes each of its probes' runs computes alone, which holds on any processor.
The same on the embedded models: tests/test_batching.py."""

import io
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tiny import random_translators
from workflow.experiments.exp001.run import run_lens
from workflow.experiments.exp003.run import run_generation
from workflow.lens.generation import LensGenerator
from workflow.config.settings import LensSettings
from workflow.lens.records import write_records

# Four probes of one padded length and one of another (on the tiny and the embedded models'
# tokenizers): "minus" leaves three of the first length, "plus" five, so the number of probes
# sharing a forward pass crosses the sizes at which this processor's products round
# differently (3 and 4 rows).
PROBES = [
    {"id": "germany", "prompt": "The capital of Germany is", "answer": " Berlin"},
    {"id": "france", "prompt": "The capital of France is", "answer": " Paris"},
    {"id": "japan-reverse", "prompt": "Tokyo is the capital of", "answer": " Japan"},
    {"id": "france-reverse", "prompt": "Paris is the capital of", "answer": " France"},
    {"id": "instruction", "prompt": "Give the city name only, plain text. The capital of France is", "answer": " Paris"},
]
EXTRA = {"id": "germany-reverse", "prompt": "Berlin is the capital of", "answer": " Germany"}


def variants(probes: list[dict], extra: dict) -> dict[str, list[dict]]:
    """The probe set, with one probe more, one fewer, and in reverse order."""
    return {"plus": probes[:2] + [extra] + probes[2:], "minus": probes[:2] + probes[3:], "reversed": probes[::-1]}


def csv_rows(rows: list[dict]) -> dict[str, list[str]]:
    """The records as the CSV file holds them, each probe's rows (a token may hold a line break)."""
    per_probe: dict[str, list[str]] = {}
    for row in rows:
        out = io.StringIO()
        write_records(out, [row])
        per_probe.setdefault(row["probe"], []).append(out.getvalue())
    return per_probe


def assert_same_per_probe(base: dict, other: dict, what: str) -> None:
    shared = [probe for probe in base if probe in other]
    assert len(shared) >= 3
    differing = [probe for probe in shared if base[probe] != other[probe]]
    assert not differing, f"{what}: the outputs of {differing} changed with the other probes"


class ProductShapes(TorchDispatchMode):
    """Every matrix product (and attention) computed inside, as (operation, input shapes)."""

    PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "matmul", "linear",
                "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math",
                "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention"}

    def __init__(self):
        super().__init__()
        self.seen: set[tuple] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.PRODUCTS:
            self.seen.add((name, *(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))))
        return func(*args, **(kwargs or {}))


def assert_each_probe_alone(run, probes: list[dict]) -> None:
    """``run(probes)`` -> (summary, record rows): every probe's records and JSON entry the same
    with one probe more, one fewer and the order reversed (``variants``)."""
    def outputs(subset):
        summary, rows = run(subset)
        return csv_rows(rows), {p["id"]: p for p in summary["probes"]}

    base_rows, base_summaries = outputs(probes)
    for name, other in variants(probes, EXTRA).items():
        rows, summaries = outputs(other)
        assert_same_per_probe(base_rows, rows, f"records, {name}")
        assert_same_per_probe(base_summaries, summaries, f"JSON, {name}")


def shapes_of(run) -> set[tuple]:
    with ProductShapes() as recorder:
        run()
    return recorder.seen


@pytest.mark.parametrize(("arch", "positions"), [("llama", "all"), ("gemma3", "last")])
def test_a_probe_s_records_and_summary_do_not_depend_on_the_other_probes(loaded, arch, positions):
    # Experiment 001's run (the lens records, and each probe's JSON entry: the last layer's
    # scores, the identity check) with both lenses.
    model = loaded[arch]
    tuned = random_translators(model)
    settings = LensSettings(top_k=3, positions=positions)

    assert_each_probe_alone(lambda probes: run_lens(model, probes, settings, tuned, batch_size=32), PROBES)


@pytest.mark.parametrize("positions", ["all", "last"])
def test_a_probe_set_computes_only_products_of_shapes_its_probes_compute_alone(loaded, positions):
    # The class of fault, on any processor: no product's shape depends on which probes share
    # a batch (001's run with both lenses: forward passes, the lenses, the identity check,
    # the last layer's scores and the tuned lens's calibration).
    # Thirty-four probes of one padded length in one batch (copies of one prompt compute what
    # it computes alone): more rows than one product of a fixed shape holds, wherever probes
    # share one (a forward pass, decoding, the heads' and translators' products).
    model = loaded["llama"]
    tuned = random_translators(model)
    settings = LensSettings(top_k=3, positions=positions)
    distinct = PROBES + [EXTRA]
    alone = set().union(*(shapes_of(lambda: run_lens(model, [probe], settings, tuned)) for probe in distinct))
    probes = distinct + [dict(EXTRA, id=f"copy-{i}") for i in range(29)]
    together = shapes_of(lambda: run_lens(model, probes, settings, tuned, batch_size=64))
    assert together <= alone, f"products of shapes no probe computes alone: {sorted(together - alone)}"


def test_generation_decodes_steps_with_the_same_product_shapes_however_many_wait(loaded):
    # Experiment 003's lens decodes the steps waiting for it together (how many depends on
    # timing): every product has the same shape, and every step the same statistics, whether
    # they were one or eight.
    model = loaded["llama"]
    generator = LensGenerator(model, LensSettings(top_k=3), random_translators(model), pending=1)
    steps, decode = [], generator.decode
    generator.decode = lambda items: steps.extend(items) or decode(items)
    prompt = model.tokenizer(PROBES[0]["prompt"])["input_ids"]
    generator.generate(prompt, 8, stop_ids=set())
    generator.decode = decode
    one_shapes = shapes_of(lambda: [generator.decode([step]) for step in steps])
    one = [trace for step in steps for trace in generator.decode([step])]
    eight_shapes = shapes_of(lambda: generator.decode(steps))
    assert eight_shapes == one_shapes

    def numbers(traces):  # a statistic's position is its place in the decode call
        return [[replace(s, position=0) for lens in t.stats.values() for s in lens] for t in traces]

    assert numbers(generator.decode(steps)) == numbers(one)


def test_a_probe_s_generation_records_do_not_depend_on_the_other_probes(loaded):
    # Experiment 003: each probe's reply and its trace, alone in its run or beside others.
    model = loaded["gemma3"]
    generator = LensGenerator(model, LensSettings(top_k=3), random_translators(model))

    assert_each_probe_alone(lambda probes: run_generation(generator, probes, 4), PROBES)

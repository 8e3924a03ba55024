"""Generation speed with the lens on every token, against plain generation.

    .venv/bin/python bench/generation.py [--tokens 48] [--repeats 2] [--models smollm2-135m-instruct gemma-3-270m] [--backend auto]

For each embedded model (prepared into resources/models/ if needed), CPU, float32, greedy
generation of --tokens tokens after "The capital of France is" (no stop token, so every
row makes the same number; transformers' ``generate`` is kept from its end-of-sequence token
by ``min_new_tokens``), tokens per second, best of --repeats, in one process:

- plain: transformers' ``generate`` (greedy, key-value cache), the reference;
- loop: ``LensGenerator``'s own loop with the lens's thread doing nothing (what the loop
  and the hooks cost);
- lens, 1 at a time: the logit lens decoding each step alone (``pending=1``);
- lens: the logit lens as lens-chat runs it (steps waiting for the lens decoded together);
- lens + tuned: both lenses, where the pipeline has trained the tuned lens
  (resources/lenses/{model}/).

The lens reads each step through the model's backend (--backend: the config's choice,
``auto`` the TransformerBridge where it supports the model, or ``hooks``).

The ratio is the lens's rate over plain generation's (issue: at least one half).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from lens_memory import prepared_dir  # noqa: E402
from lens_speed import best_of  # noqa: E402

PROMPT = "The capital of France is"


def measure(model_key: str, tokens: int, repeats: int, backend: str = "auto") -> dict:
    import torch

    from workflow.lens.generation import LensGenerator, stop_token_ids
    from workflow.config.settings import LensSettings
    from workflow.lens.session import lens_heads
    from workflow.model.load import load_model

    model = load_model(model_key, {"source": "local", "path": str(prepared_dir(model_key))}, None, device="cpu", dtype="float32",
                       backend=backend)
    ids = model.tokenizer(PROMPT)["input_ids"]
    hf = model.backend.hf_model
    settings = LensSettings()
    rates: dict[str, float] = {}

    def plain():
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return out[0, len(ids):].tolist()

    seconds, reference = best_of(repeats, plain)
    rates["plain"] = tokens / seconds

    class NoLens(LensGenerator):
        def decode(self, items):
            return []

    def run(generator):
        return lambda: generator.generate(ids, tokens, stop_ids=set()).token_ids

    loop = NoLens(model, settings)
    rates["loop"] = tokens / best_of(repeats, lambda: loop.generate(ids, tokens, stop_ids=set()))[0]
    seconds, single = best_of(repeats, run(LensGenerator(model, settings, pending=1)))
    rates["lens, 1 at a time"] = tokens / seconds
    seconds, batched = best_of(repeats, run(LensGenerator(model, settings)))
    rates["lens"] = tokens / seconds
    # transformers' generate with min_new_tokens forbids the end-of-sequence token until the
    # end (the same work per token); the lens's loop does not stop at it: equal up to there.
    stops = stop_token_ids(model)
    agreed = next((i for i, t in enumerate(batched) if t in stops), len(batched))
    assert single == batched and batched[:agreed] == reference[:agreed], "the lens changed what was generated"
    lenses = REPO / "resources" / "lenses" / model_key
    if lenses.is_dir():
        from workflow.lens.tuned import load as load_tuned

        tuned, _ = load_tuned(lenses, lens_heads(model, settings).reference, model_key)
        seconds, both = best_of(repeats, run(LensGenerator(model, settings, tuned)))
        assert both == batched
        rates["lens + tuned"] = tokens / seconds
    return {"model": model_key, "backend": model.backend.name, "layers": model.n_layers, "vocab": model.vocab_size, **rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--backend", default="auto", choices=["auto", "bridge", "hooks"])
    args = parser.parse_args()
    import torch

    print(f"# generation with the lens: {args.tokens} greedy tokens, best of {args.repeats}; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    columns = ["plain", "loop", "lens, 1 at a time", "lens", "lens + tuned"]
    print("| model | backend | layers | vocabulary | " + " | ".join(f"{c} tok/s" for c in columns) + " | lens / plain | lens + tuned / plain |")
    print("|---" * (len(columns) + 6) + "|")
    for key in args.models:
        row = measure(key, args.tokens, args.repeats, args.backend)
        cells = [f"{row[c]:.1f}" if c in row else "not trained" for c in columns]
        both = f"{row['lens + tuned'] / row['plain']:.2f}" if "lens + tuned" in row else "n/a"
        print(f"| {key} | {row['backend']} | {row['layers']} | {row['vocab']} | " + " | ".join(cells)
              + f" | {row['lens'] / row['plain']:.2f} | {both} |", flush=True)


if __name__ == "__main__":
    main()

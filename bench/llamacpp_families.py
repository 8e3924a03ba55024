"""Which GGUF architectures the llama.cpp backend reads, and what layer 0 is in each graph.

    .venv/bin/python bench/llamacpp_families.py [--outtype f32]

Each family of tests/test_gguf_architectures.py (a tiny random transformers model, converted
to GGUF by llama.cpp's own converter) opened by ``workflow.model.llamacpp.LlamaCppModel``:
the graph tensor found as layer 0 (the residual entering block 0) or why the file is refused,
and how far every layer's residual is from the original transformers model's (forward hooks
on its decoder layers, float32), relative to the layer's largest value, with float32
attention (``cache_type="f32", flash_attention=False``) and with llama.cpp's defaults.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

PROMPT = "The capital of Germany is Berlin, and the capital of France is"


def hooked_residuals(hf_dir: Path, ids: list[int]) -> np.ndarray:
    """[L+1, T, d]: the original model's residual stream, through the hooks backend's own
    capture on its decoder layers."""
    import torch
    from transformers import AutoModelForCausalLM

    from workflow.model.backends import find_decoder_layers, layer_residuals, stacked

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    layers = find_decoder_layers(model, model.config.get_text_config().num_hidden_layers)
    with layer_residuals(layers, lambda t: t[0]) as captured, torch.no_grad():
        model(torch.tensor([ids]))
    return stacked(captured).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outtype", default="f32")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from test_gguf_architectures import convert, family_configs
    from tiny import save_random
    from workflow.base.errors import UserError
    from workflow.model.llamacpp import LlamaCppModel
    from workflow.gguf.prepare import prepare_model

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        smollm = REPO / "resources" / "models" / "smollm2-135m-instruct"
        if not (smollm / "manifest.json").is_file():
            import yaml

            entry = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"]["smollm2-135m-instruct"]
            prepare_model("smollm2-135m-instruct", entry, root / "smollm2")
            smollm = root / "smollm2"
        tokenizer = AutoTokenizer.from_pretrained(smollm)
        jobs, dirs = [], {}
        for seed, (arch, config) in enumerate(family_configs(tokenizer).items()):
            dirs[arch] = save_random(root / "hf" / arch, config, tokenizer, seed=seed)
            jobs.append((dirs[arch], args.outtype, root / f"{arch}.gguf"))
        convert(jobs)
        print(f"tiny random models of every family of tests/test_gguf_architectures.py, {args.outtype} GGUF by "
              "llama.cpp's converter; prompt of", len(tokenizer(PROMPT)["input_ids"]), "tokens\n")
        print("| architecture | layer 0 | l_out-N | max deviation, float32 attention | max deviation, defaults |")
        print("| --- | --- | --- | --- | --- |")
        for arch in dirs:
            path = root / f"{arch}.gguf"
            try:
                exact = LlamaCppModel(path, cache_type="f32", flash_attention=False, key=arch)
            except UserError as error:
                print(f"| {arch} | refused: {error} | | | |")
                continue
            default = LlamaCppModel(path, key=arch)
            ids = exact.tokenize(PROMPT)
            want = hooked_residuals(dirs[arch], ids)
            scale = np.abs(want).max(axis=(1, 2))
            deviations = [float((np.abs(m.run(ids).residuals - want).max(axis=(1, 2)) / scale).max()) for m in (exact, default)]
            print(f"| {arch} | `{exact.layer_names[0]}` | `l_out-0` .. `l_out-{exact.n_layers - 1}` | "
                  f"{deviations[0]:.1e} | {deviations[1]:.1e} |")
            exact.close()
            default.close()


if __name__ == "__main__":
    main()

"""Do two commits compute the same results? The tiny two-model run (a Llama-family and a
Gemma 3-family random model, both lenses, every experiment) built at each commit, and every
output JSON, records file, lens-quality table and trained tuned lens compared byte for byte.

    .venv/bin/python bench/same_outputs.py OLD NEW

For a change meant to preserve behaviour (a refactor): the table lists each output and
whether its bytes are the same; the exit status is 1 when any differs. Evaluations, figures,
pages and provenance records are left out: they hold code digests, which a refactor changes.
Both runs use this checkout's virtual environment, on this machine (records agree across
machines only to float noise, docs/reproducibility.md).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

COMPARED = ("*.json", "*-records.csv", "*-records.parquet", "lens-quality*.csv")


def run_at(commit: str, root: Path, models: dict[str, Path]) -> Path:
    tree = root / commit
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), commit], cwd=REPO, check=True)
    shutil.rmtree(tree / "results")  # the committed results: only what this run makes is compared
    from conftest import TUNED, tiny_config  # the suite's tiny run: every experiment, both lenses

    config = tiny_config(models, **TUNED)
    (tree / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--cores", "2"], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the run at {commit} failed:\n{done.stderr[-3000:]}")
    return tree


def outputs(tree: Path) -> list[str]:
    found = set()
    for pattern in COMPARED:
        found |= {str(p.relative_to(tree)) for p in (tree / "results").rglob(pattern) if "provenance" not in p.parts}
    found |= {str(p.relative_to(tree)) for p in (tree / "resources").rglob("*") if p.is_file() and "tuned-lens" in p.parts
              and not p.name.startswith(".")}
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    args = parser.parse_args()
    from tiny import make_model_dir

    with tempfile.TemporaryDirectory(prefix="same-outputs-") as tmp:
        root = Path(tmp)
        models = {arch: make_model_dir(root / "models" / arch, arch, seed=i) for i, arch in enumerate(("llama", "gemma3"))}
        try:
            old, new = run_at(args.old, root, models), run_at(args.new, root, models)
            names = sorted(set(outputs(old)) | set(outputs(new)))
            width = max(len(n) for n in names)
            print(f"| {'output'.ljust(width)} | same bytes |\n| {'-' * width} | --- |")
            differ = 0
            for name in names:
                same = (old / name).is_file() and (new / name).is_file() and filecmp.cmp(old / name, new / name, shallow=False)
                differ += not same
                print(f"| {name.ljust(width)} | {'yes' if same else 'NO'} |")
            print(f"\n{len(names) - differ} of {len(names)} outputs the same at {args.old} and {args.new}")
        finally:
            for tree in root.iterdir():
                if tree.name != "models":
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

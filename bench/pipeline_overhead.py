"""Pipeline overhead: what Snakemake and our rules cost around the real work.

    .venv/bin/python bench/pipeline_overhead.py      (after `make demo`; part of `make bench`)

In a scratch copy of the finished default run (workflow files, results/, Snakemake's
metadata; no prepared models or lenses, which nothing measured here needs), best of --repeats:

- `snakemake --version`: interpreter and Snakemake start-up, the floor of any command;
- `snakemake -n` with everything current: the no-op dry run (config validation,
  DAG, provenance checks of every output);
- `snakemake --cores 1` after appending a line to prompts/001/cross-model-evaluation.md:
  the re-run the edit invalidates (cross-model and meta evaluations and their pages),
  and the number of jobs it ran.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPY = ["Snakefile", "rules", "scripts", "prompts", "config", "workflow", "profiles", "data", "results", ".snakemake/metadata", ".snakemake/incomplete"]


def snakemake(workdir: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return seconds, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (REPO / "results" / "001" / "evaluation-meta.md").is_file() or not (REPO / ".snakemake" / "metadata").is_dir():
        raise SystemExit("run `make demo` first: this measures the overhead around a finished run")
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        work = Path(tmp)
        for name in COPY:
            src, dst = REPO / name, work / name
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        # No resources/: what is measured needs no prepared model or lens, and Snakemake does
        # not rebuild them while the results made from them are current (a fresh clone has
        # none, and the lens benchmark may have just prepared the models, newer than results).
        _, said = snakemake(work, "-n")
        if "Nothing to be done" not in said:
            raise SystemExit("the finished run is not current (snakemake -n plans jobs); run `make demo` first")
        version = min(snakemake(work, "--version")[0] for _ in range(args.repeats))
        dry = min(snakemake(work, "-n")[0] for _ in range(args.repeats))
        reruns = []
        for i in range(args.repeats):
            with open(work / "prompts" / "001" / "cross-model-evaluation.md", "a", encoding="utf-8") as fh:
                fh.write(f"\nEdit {i}.\n")
            seconds, said = snakemake(work, "--cores", "1")
            jobs = re.search(r"(\d+) of \1 steps \(100%\) done", said)
            reruns.append((seconds, int(jobs.group(1)) if jobs else 0))
    best = min(reruns)
    print("| step | time (s) |")
    print("| --- | --- |")
    print(f"| `snakemake --version` (start-up floor) | {version:.2f} |")
    print(f"| `snakemake -n`, everything current | {dry:.2f} |")
    print(f"| `snakemake --cores 1` after editing the cross-model template ({best[1]} jobs) | {best[0]:.2f} |")


if __name__ == "__main__":
    main()

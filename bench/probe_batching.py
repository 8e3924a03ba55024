"""Probe-set throughput: the lens run (``workflow.lens.run``) on 200 probes, batched against one at a time, and
against the batching of another revision.

    .venv/bin/python bench/probe_batching.py [--probes 200] [--batch-size 32] [--repeat 2]
        [--models smollm2-135m-instruct gemma-3-270m] [--against REV]

For each embedded model (prepared into resources/models/ if needed): the first --probes
probes of the shipped relation company_ceo in both directions (multi-token answers, names
of people and companies), CPU, float32, positions: last, the logit lens, timed from "model
loaded" to "records in hand", the best of --repeat runs, each in a fresh process:
``read_probes`` with --batch-size probes to a batch (forward passes of FORWARD_ROWS
sequences, padded, with an attention mask; the last positions decoded DECODE_POSITIONS at a
time), against the same with batch size 1 ("one at a time"; "identical": every record, every
field unrounded, and every per-probe reading but the identity check's float-noise figures
equal between the two). With --against, revision REV's code (checked out into a temporary
folder) batched, and one at a time as REV ran it (a lone probe beside one copy of itself, not
fifteen filler sequences: the cost of reading probes one by one); "as REV": this code's records
equal to REV's batched ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(repo: Path, model_key: str, n_probes: int, batch_size: int) -> dict:
    """One timed run of ``repo``'s code in this process: seconds, and digests of the records
    and of the per-probe readings."""
    sys.path.insert(0, str(repo))
    sys.path.insert(0, str(REPO / "bench"))
    import workflow  # noqa: F401 (MKL's reproducible mode)
    from lens_memory import prepared_dir
    try:  # the library in packages
        from workflow.config.probes import load
        from workflow.config.settings import LensSettings
        from workflow.lens.run import read_probes
        from workflow.model.load import load_model
    except ImportError:  # a revision from before the packages
        from workflow.lens_run import read_probes
        from workflow.lens_setup import LensSettings
        from workflow.models import load_model
        from workflow.probes import load

    probes = load({"relations": ["company_ceo"], "directions": "both"}, REPO)[:n_probes]
    model = load_model(model_key, {"source": "local", "path": str(prepared_dir(model_key))}, None, device="cpu", dtype="float32")
    settings = LensSettings(positions="last")
    read_probes(model, probes[:4], settings, None, batch_size)  # warm-up: kernel build, first-call costs
    started = time.perf_counter()
    read = read_probes(model, probes, settings, None, batch_size)
    seconds = time.perf_counter() - started
    readings = [{k: v for k, v in p.items() if k != "identity_check"} for p in read.probes]

    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()

    return {"seconds": seconds, "records": digest(read.rows), "readings": digest(readings), "layers": model.n_layers}


def timed(repo: Path, model_key: str, n_probes: int, batch_size: int, repeat: int) -> dict:
    """The best of ``repeat`` runs, each in a fresh process."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--worker", str(repo), model_key, str(n_probes), str(batch_size)],
                             check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def checkout(revision: str, where: Path) -> Path:
    """Revision ``revision``'s files under ``where`` (its workflow/ is what the runs import)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        repo, model_key, n_probes, batch_size = sys.argv[2:6]
        print(json.dumps(measure(Path(repo), model_key, int(n_probes), int(batch_size))))
        return
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--against", metavar="REV", help="also time this git revision's batching and one at a time")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.probes} probes of company_ceo (both directions), positions last, logit lens, best of {args.repeat}\n")
    with tempfile.TemporaryDirectory() as scratch:
        other = checkout(args.against, Path(scratch)) if args.against else None
        if other:
            print(f"| model | layers | one at a time, {args.against} (s) | batched, {args.against} (s) | batched (s) | s / probe | "
                  f"speed-up over one at a time | time against {args.against}'s batching | records as {args.against}'s |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        else:
            print("| model | layers | one at a time (s) | batched (s) | s / probe | speed-up | identical |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
        for model in args.models:
            batched = timed(REPO, model, args.probes, args.batch_size, args.repeat)
            one = timed(other or REPO, model, args.probes, 1, args.repeat)
            line = f"| {model} | {batched['layers']} | {one['seconds']:.1f} |"
            if other:
                theirs = timed(other, model, args.probes, args.batch_size, args.repeat)
                line += f" {theirs['seconds']:.1f} |"
            line += f" {batched['seconds']:.1f} | {batched['seconds'] / args.probes:.3f} | {one['seconds'] / batched['seconds']:.1f}x |"
            if other:
                line += f" {batched['seconds'] / theirs['seconds']:.2f}x | {'yes' if batched['records'] == theirs['records'] else 'no'} |"
            else:
                identical = one["records"] == batched["records"] and one["readings"] == batched["readings"]
                line += f" {'yes' if identical else 'NO'} |"
            print(line, flush=True)

if __name__ == "__main__":
    main()

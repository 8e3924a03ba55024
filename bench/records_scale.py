"""Records at scale: experiment 001's records file as CSV and as Parquet.

    .venv/bin/python bench/records_scale.py [--probes 10000] [--layers 31]

Synthetic records shaped like a large probe set's with positions: last (--probes probes x
--layers layers x 2 lenses, top-5 lists, seeded random values), written with
``workflow.lens.records.write_records_file`` and read back with ``read_records`` (list columns
parsed), in one process; each row read back is checked equal to the rounded row written.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_rows(n_probes: int, n_layers: int) -> list[dict]:
    rng = random.Random(0)
    tokens = [" Paris", " the", " a", " London", " Berlin", "\n", ' "', " Köln"]
    rows = []
    for p in range(n_probes):
        for lens in ("logit", "tuned"):
            for layer in range(n_layers):
                top = rng.sample(tokens, 5)
                rows.append({
                    "model": "m", "probe": f"relation.subject-{p}", "lens": lens, "layer": layer, "position": 7,
                    "input_token": " is", "top1_token": top[0], "top1_prob": rng.random(), "topk_tokens": top,
                    "topk_probs": sorted((rng.random() for _ in range(5)), reverse=True), "entropy": rng.random() * 5,
                    "answer_token": " Paris", "answer_prob": rng.random(), "answer_rank": rng.randint(1, 50000),
                    "kl_to_final": rng.random() * 10,
                })
    return rows


def main() -> None:
    from workflow.lens.records import COLUMNS, read_records, rounded, write_records_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=10000)
    parser.add_argument("--layers", type=int, default=31)
    args = parser.parse_args()
    rows = synthetic_rows(args.probes, args.layers)
    expected = [[rounded(row[c]) for c in COLUMNS] for row in rows[:: max(1, len(rows) // 1000)]]
    print(f"{len(rows):,} rows ({args.probes:,} probes x {args.layers} layers x 2 lenses)\n")
    print("| format | write (s) | read (s) | size (MB) | read back equal |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("csv", "parquet"):
            path = Path(tmp) / f"records.{fmt}"
            started = time.perf_counter()
            write_records_file(path, rows, fmt)
            written = time.perf_counter() - started
            started = time.perf_counter()
            frame = read_records(path)
            read = time.perf_counter() - started
            sample = frame.iloc[:: max(1, len(rows) // 1000)]
            got = [[v if not hasattr(v, "item") else v.item() for v in row] for row in sample[list(COLUMNS)].itertuples(index=False)]
            print(f"| {fmt} | {written:.1f} | {read:.1f} | {os.path.getsize(path) / 1e6:.0f} | {'yes' if got == expected else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()

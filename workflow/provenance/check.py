"""Is every result current? The dry run's plan, per artefact.

``python -m workflow.provenance.check`` (or ``make check``) runs the dry run of the default target
(``snakemake -n``), which compares the current config and code with the records exactly as
every plan does (workflow/provenance/plan.py), and reports every output of every job of that plan
under ``results/`` (a provenance record by the artefacts it names), and any output of a
planned job elsewhere, as ``ok`` (the plan does not make it again), ``stale`` (the plan
makes it again: its params, code or an input changed since its record, or it reads what
another job makes again; the reason says which), ``modified`` (edited after it was made)
or ``missing`` (not there, whether or not a record names it). Every other file under
``results/`` is ``unplanned`` (a record names it, but no job of the plan makes it: a model
or experiment no longer in the config) or ``unrecorded`` (no record names it). What the
check does not call ok is what the dry run plans: the two cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.provenance.plan import REPORT_ENV
from workflow.provenance.record import RECORD_SUFFIX


@dataclass(frozen=True)
class Finding:
    status: str  # ok | stale | modified | missing | unplanned | unrecorded
    artefact: str
    reason: str = ""


class PlanError(RuntimeError):
    """The workflow cannot be planned (a config error, say); the message is Snakemake's."""


def plan(root: str | os.PathLike[str] = ".") -> list[dict[str, Any]]:
    """Every job of the dry run's plan in ``root`` (workflow.provenance.plan.plan_entry)."""
    with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
        report = Path(tmp) / "plan.json"
        done = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--quiet", "all"],
            cwd=root, capture_output=True, text=True, timeout=1800,
            env={**os.environ, REPORT_ENV: str(report)},
        )
        if done.returncode != 0:
            raise PlanError((done.stdout + done.stderr).strip()[-3000:])
        if not report.is_file():
            raise PlanError(f"the dry run wrote no plan ({REPORT_ENV}): the Snakefile must install workflow.provenance.plan")
        return json.loads(report.read_text(encoding="utf-8"))


def check(root: str | os.PathLike[str] = ".", results: str = "results") -> list[Finding]:
    """Every artefact of the plan of ``root``, and every other file under ``root/results``."""
    root = Path(root)
    findings: list[Finding] = []
    made: set[str] = set()
    for job in plan(root):
        reason = "; ".join(job["reasons"])
        for name in job["outputs"]:
            made.add(name)
            path = root / name
            is_record = name.endswith(RECORD_SUFFIX)
            if not job["planned"]:
                if Path(name).parts[:1] == (results,) and not is_record:
                    findings.append(Finding("ok", name))
            elif not path.exists():
                findings.append(Finding("missing", name, reason))
            elif name in job["modified"]:
                findings.append(Finding("modified", name, reason))
            elif not is_record:
                findings.append(Finding("stale", name, reason))
    named = recorded(root / results, root)
    for path in sorted((root / results).rglob("*")):
        name = str(path.relative_to(root))
        if path.is_file() and "cache" not in path.relative_to(root / results).parts and name not in made:
            if name in named:
                findings.append(Finding("unplanned", name, f"{named[name]} names it, but no job of the plan makes it"))
            else:
                findings.append(Finding("unrecorded", name, "no provenance record names it"))
    return sorted(findings, key=lambda f: f.artefact)


def recorded(folder: Path, root: Path) -> dict[str, str]:
    """Each record under ``folder``, and each artefact it names -> that record."""
    named = {}
    for record_file in sorted(folder.rglob(f"*{RECORD_SUFFIX}")):
        record = str(record_file.relative_to(root))
        named[record] = record
        try:
            artefacts = json.loads(record_file.read_text(encoding="utf-8"))["artefacts"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # the plan says what is wrong with it, if a job of the plan writes it
        named.update({str(Path(name)): record for name in artefacts})
    return named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.provenance.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="repository root (default: the current directory)")
    args = parser.parse_args(argv)
    try:
        findings = check(args.root)
    except PlanError as error:
        print(f"the workflow cannot be planned, so nothing can be checked:\n{error}", file=sys.stderr)
        return 2
    width = max([len(f.artefact) for f in findings] + [8])
    for f in findings:
        print(f"{f.status:<10} {f.artefact:<{width}} {f.reason}".rstrip())
    bad = [f for f in findings if f.status != "ok"]
    print(f"{len(findings) - len(bad)} ok, {len(bad)} not ok" if findings else "no artefacts found under results/")
    return 1 if bad or not findings else 0


if __name__ == "__main__":
    sys.exit(main())

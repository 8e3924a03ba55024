"""What a rule's output depends on beyond its input files: the library code it runs.

Snakemake re-runs a ``script:`` rule when the script changes, not when a module of
this package that the script imports changes. Each rule therefore carries
``code_version(stage)`` as a param: a hash of the modules that stage runs, so an
edit to the lens code re-plans the lens jobs and nothing else.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

COMMON = ("__init__.py", "atomic.py", "errors.py", "logs.py")
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "prepare": COMMON + ("models.py",),
    "lens": COMMON + ("models.py", "lens.py", "experiment.py", "records.py"),
    "evaluate": COMMON
    + (
        "records.py",
        "evaluation/__init__.py",
        "evaluation/analysis.py",
        "evaluation/digest.py",
        "evaluation/offline.py",
        "evaluation/providers.py",
        "evaluation/templates.py",
        "evaluation/run.py",
    ),
}


def code_version(stage: str) -> str:
    """sha256 (first 16 hex digits) over the source of the modules ``stage`` runs."""
    digest = hashlib.sha256()
    for name in STAGE_MODULES[stage]:
        path = PACKAGE_DIR / name
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]

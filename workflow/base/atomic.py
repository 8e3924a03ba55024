"""Atomic file output: write to a hidden temporary sibling, then rename.

A job that fails or is interrupted leaves no partial output behind: either the
complete file appears under its final name, or nothing does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _prefix(name: str) -> str:
    return f".{name}.tmp-"


def temporaries(output: str | os.PathLike[str]) -> list[str]:
    """The temporary siblings of ``output`` that a writer interrupted before its rename left."""
    import glob

    folder, name = os.path.split(os.fspath(output))
    return glob.glob(os.path.join(glob.escape(folder or "."), glob.escape(_prefix(name)) + "*"))


def _temp_sibling(path: Path, directory: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = _prefix(path.name)
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Yield temporary paths for ``paths``; rename them all into place on success.

    On any exception (including KeyboardInterrupt) the temporaries are removed
    and the final paths are left untouched.
    """
    finals = [Path(p) for p in paths]
    temps = [_temp_sibling(p) for p in finals]
    try:
        yield temps
        for tmp, final in zip(temps, finals):
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` as a whole on success."""
    final = Path(path)
    tmp = _temp_sibling(final, directory=True)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_paths(path) as (tmp,):
        tmp.write_text(text, encoding="utf-8")


def dumps_json(data: Any) -> str:
    """Stable JSON text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, dumps_json(data))

"""Write data/corpus.txt.gz: the offline training text of the tuned lens.

    python data/make_corpus.py        (the committed file was made with CPython 3.11.7)

The text is the docstrings of Python's standard library (pure-Python modules, tests and
private modules left out), each one a document, cleaned with inspect.cleandoc and kept
once (the first time it appears) when it has at least 200 characters of prose. Licence: Python Software Foundation
License 2.0 (permissive; see data/README.md). Deterministic: modules in sorted order, no
randomness; the same interpreter version gives the same bytes.
"""

from __future__ import annotations

import ast
import gzip
import inspect
import sysconfig
from pathlib import Path

OUT = Path(__file__).with_name("corpus.txt.gz")
MIN_CHARS = 200
MAX_BYTES = 2_500_000
SEPARATOR = "\n\n\f\n\n"  # between documents


def documents(stdlib: Path):
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if any(p.startswith(("test", "_", "idle", "site-packages", "lib2to3", "ensurepip")) for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node, clean=True)
                if text and len(text) >= MIN_CHARS and ">>>" not in text:
                    yield inspect.cleandoc(text)


def main() -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    kept, size, seen = [], 0, set()
    for doc in documents(stdlib):
        if doc in seen:  # the same docstring in several modules: once, so no text is both trained on and held out
            continue
        seen.add(doc)
        if size + len(doc) > MAX_BYTES:
            break
        kept.append(doc)
        size += len(doc) + len(SEPARATOR)
    data = SEPARATOR.join(kept).encode("utf-8")
    OUT.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"{len(kept)} documents, {len(data) / 1e6:.2f} MB of text, {OUT.stat().st_size / 1e6:.2f} MB compressed -> {OUT}")


if __name__ == "__main__":
    main()

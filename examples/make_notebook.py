"""Write examples/capital-of-germany.ipynb from examples/capital_of_germany.py, whose cells
are marked ``# %%`` (code) and ``# %% [markdown]`` (text, each line commented), and execute
it, so that it is committed with its outputs (read on a forge, it answers its question):
one source, so the notebook and the script cannot drift apart, and tests/test_api.py checks
that the committed outputs are what its code makes of the committed results.

    .venv/bin/python examples/make_notebook.py

It runs in examples/ with this checkout's ``workflow``, on the models and tuned lenses under
resources/ (``make demo`` makes them; else the notebook prepares and trains them once).
What went to stderr (weight-loading progress bars, with their timings) is left out of the
outputs: they hold what the notebook shows, and nothing that differs from run to run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SCRIPT, NOTEBOOK = HERE / "capital_of_germany.py", HERE / "capital-of-germany.ipynb"


def notebook(script: str) -> nbformat.NotebookNode:
    """The cells of a ``# %%`` script as a notebook (no outputs)."""
    cells = []
    for chunk in script.split("# %%")[1:]:
        header, _, body = chunk.partition("\n")
        if header.strip() == "[markdown]":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.strip().splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cells.append(nbformat.v4.new_code_cell(body.strip()))
    for number, cell in enumerate(cells, 1):
        cell.id = f"cell-{number}"  # stable, so the file is the same each time it is written
    book = nbformat.v4.new_notebook(cells=cells)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return book


def execute(book: nbformat.NotebookNode, folder: Path) -> nbformat.NotebookNode:
    """``book`` run top to bottom in a Python kernel in ``folder`` (a failing cell stops it),
    with its outputs less what went to stderr."""
    from nbclient import NotebookClient

    # The kernel imports this checkout's workflow, wherever the environment's editable install points.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    NotebookClient(book, timeout=3600, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(folder)}}).execute()
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    return book


def main() -> int:
    book = execute(notebook(SCRIPT.read_text(encoding="utf-8")), HERE)
    nbformat.write(book, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

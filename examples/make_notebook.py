"""Write examples/capital-of-germany.ipynb from examples/capital_of_germany.py, whose cells
are marked ``# %%`` (code) and ``# %% [markdown]`` (text, each line commented): one source,
so the notebook and the script cannot drift apart (tests/test_api.py checks it).

    .venv/bin/python examples/make_notebook.py
"""

from __future__ import annotations

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


def main() -> int:
    nbformat.write(notebook(SCRIPT.read_text(encoding="utf-8")), NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

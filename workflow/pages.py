"""Evaluations as self-contained HTML pages, for the Snakemake report and for reading offline.

The report shows images, HTML and PDF in place; a markdown file would only be offered
as a download. So each evaluation is rendered to one HTML file whose figures are
embedded as data URIs (the markdown links them relative to itself, which only
works next to the plots). The rendering is a pure function of the markdown and the
images: same inputs, same bytes.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import os
from pathlib import Path

from markdown_it import MarkdownIt

from workflow.atomic import write_text
from workflow.errors import UserError

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #1f2328; }
code { background: #f6f8fa; padding: 0.1em 0.3em; border-radius: 4px; font-size: 90%; }
pre code { display: block; padding: 0.8em; overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: 90%; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.6em; text-align: left; }
th { background: #f6f8fa; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
h1, h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
""".strip()


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render_page(markdown_path: str | os.PathLike[str], title: str) -> str:
    """The HTML document of one markdown file, its local images embedded.

    Images are looked up relative to the markdown file, as GitHub does. A missing
    image is an error naming the file and the link, not a broken picture.
    """
    markdown_path = Path(markdown_path)
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown_path.read_text(encoding="utf-8"))
    for token in tokens:
        for child in token.children or []:
            if child.type != "image":
                continue
            src = str(child.attrs.get("src", ""))
            if src.startswith(("http://", "https://", "data:")):
                continue
            image = markdown_path.parent / src
            if not image.is_file():
                raise UserError(f"{markdown_path}: the figure {src!r} it links does not exist ({image}). "
                                "Run the plot rules first (snakemake builds them as inputs).")
            child.attrs["src"] = _data_uri(image)
    body = parser.renderer.render(tokens, parser.options, {})
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def write_page(markdown_path: str | os.PathLike[str], output: str | os.PathLike[str], title: str) -> None:
    write_text(output, render_page(markdown_path, title))

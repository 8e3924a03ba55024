"""Evaluations as self-contained HTML pages, for the Snakemake report and for reading offline.

The report shows images, HTML and PDF in place; a markdown file would only be offered
as a download. So each evaluation is rendered to one HTML file whose figures are
embedded as data URIs (the markdown links them relative to itself, which only
works next to the plots). The rendering is a pure function of the markdown and the
images: same inputs, same bytes.

An evaluation's text is not all the pipeline's: an LLM writes it, and it quotes the user's
probes. So a page embeds only the figures its rule declares (an image link that resolves to
one of them); any other image (another local file, ``/proc/self/environ``, a symlink out,
``http(s)``, ``data:``, ``//host``) is shown as text naming it: nothing is read, nothing is
fetched when the page is opened. Links go to ``http(s)``, ``mailto`` or a place in the page
only; raw HTML is shown as text.
"""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from workflow.base.atomic import write_text
from workflow.base.errors import UserError

log = logging.getLogger(__name__)

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

LINK_SCHEMES = ("http", "https", "mailto")  # where a link may lead (and "#..." within the page)
SHOWN_CHARS = 80  # how much of a refused image's address the page shows (a data: URI can be megabytes)


def _data_uri(path: Path, name: str) -> str:
    mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _shown(address: str) -> str:
    return address if len(address) <= SHOWN_CHARS else address[: SHOWN_CHARS - 1] + "…"


def _local(src: str) -> bool:
    """Whether an image address is a path (no scheme such as http: or data:, no //host)."""
    parts = urlsplit(src)
    return not parts.scheme and not parts.netloc and not src.startswith("//")


def _safe_link(href: str) -> bool:
    scheme = urlsplit(href).scheme.lower()
    return scheme in LINK_SCHEMES if scheme else href.startswith("#")


def _text(content: str, level: int) -> Token:
    token = Token("text", "", 0, content=content)
    token.level = level
    return token


def render_page(markdown_path: str | os.PathLike[str], title: str, figures: Iterable[str | os.PathLike[str]]) -> str:
    """The HTML document of one markdown file, its figures embedded.

    ``figures``: the images the page may embed (its rule's declared inputs). An image link is
    looked up relative to the markdown file, as GitHub does, and embedded when it resolves
    (symlinks followed) to one of them; a declared figure that is missing is an error naming
    the file and the link. Every other image is shown as text saying it was not embedded.
    """
    markdown_path = Path(markdown_path)
    declared = {os.path.realpath(figure) for figure in figures}
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown_path.read_text(encoding="utf-8"))
    refused = []
    for token in tokens:
        if not token.children:
            continue
        children = []
        link_text = None  # the address of a refused link, shown after its text
        for child in token.children:
            if child.type == "image":
                src = str(child.attrs.get("src", ""))
                image = markdown_path.parent / unquote(src)
                if _local(src) and os.path.realpath(image) in declared:
                    if not image.is_file():
                        raise UserError(f"{markdown_path}: the figure {src!r} it links does not exist ({image}). "
                                        "Run the plot rules first (snakemake builds them as inputs).")
                    child.attrs["src"] = _data_uri(image, image.name)
                else:
                    address = _shown(parser.normalizeLinkText(src))
                    refused.append(address)
                    child = _text(f"[image “{child.content}” not shown: {address} is not one of this evaluation's figures]",
                                  child.level)
            elif child.type == "link_open" and not _safe_link(str(child.attrs.get("href", ""))):
                href = _shown(parser.normalizeLinkText(str(child.attrs.get("href", ""))))
                link_text = "" if child.markup == "autolink" else f" ({href})"
                continue
            elif child.type == "link_close" and link_text is not None:
                child, link_text = _text(link_text, child.level), None
            children.append(child)
        token.children = children
    if refused:
        log.warning("%s: %d image(s) shown as text, not embedded (not this evaluation's figures): %s",
                    markdown_path, len(refused), ", ".join(refused))
    body = parser.renderer.render(tokens, parser.options, {})
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def write_page(markdown_path: str | os.PathLike[str], output: str | os.PathLike[str], title: str,
               figures: Iterable[str | os.PathLike[str]]) -> None:
    write_text(output, render_page(markdown_path, title, figures))

"""The README stays a getting-started a newcomer can follow, and its links and the reference
pages' table of contents lead somewhere."""

import re

from pipeline import REPO
from test_readme_commands import documents


def headings(text: str, levels=(1, 2, 3, 4)) -> list[str]:
    fence, found = False, []
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        match = re.match(r"^(#{1,4}) (.*)", line)
        if not fence and match and len(match[1]) in levels:
            found.append(match[2])
    return found


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_the_readme_is_a_short_getting_started():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 160
    for topic in ("make demo", "make test", "source: gguf", "source: local", "probes:", "provider: anthropic",
                  "base_url", "mps", "api.load", "docs/README.md"):
        assert topic in text, topic


def test_every_relative_link_leads_to_a_file_and_heading():
    links = 0
    for path in documents():
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+://", target):
                continue
            file, _, fragment = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            assert resolved.exists(), f"{path.name}: {target}"
            if fragment:
                assert fragment in {anchor(h) for h in headings(resolved.read_text(encoding="utf-8"))}, f"{path.name}: {target}"
            links += 1
    assert links > 30


def test_the_table_of_contents_lists_every_page_and_section():
    toc = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    for page in sorted((REPO / "docs").glob("*.md")):
        if page.name == "README.md":
            continue
        for heading in headings(page.read_text(encoding="utf-8"), levels=(2, 3)):
            assert f"]({page.name}#{anchor(heading)})" in toc, (page.name, heading)

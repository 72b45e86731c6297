"""Checks a report must pass wherever it is built."""

from __future__ import annotations

import re
from pathlib import Path

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|@import|url\(\s*["']?https?:""",
                      re.IGNORECASE)


def assert_self_contained(html: str) -> None:
    """No network reference: images embedded, styles inline, no scripts from elsewhere."""
    assert html.startswith("<!DOCTYPE html>")
    assert html.rstrip().endswith("</html>")
    match = EXTERNAL.search(html)
    assert match is None, html[max(match.start() - 80, 0):match.end() + 80] if match else ""
    for src in re.findall(r"""<img[^>]*src=["']([^"']+)""", html):
        assert src.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")), src[:80]


def assert_links_resolve(markdown: str, root: Path) -> None:
    """Every relative link or image of a Markdown file names a non-empty file beside it."""
    links = re.findall(r"\]\(([^)]+)\)", markdown)
    assert links, "no links"
    for link in links:
        target = root / link
        assert target.is_file() and target.stat().st_size > 0, link

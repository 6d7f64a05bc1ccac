"""A small, escaping-first renderer for the markdown of CDS Hooks card details.

CDS Hooks 2.0 §Card: ``detail`` is GitHub Flavored Markdown. The review page shows the card
as the EHR rendered it, without a markdown library or any script: every character is
HTML-escaped first, then only bold, italics, bullet lists, paragraphs and backslash escapes
are turned into tags. Anything else stays as escaped text.
"""

from __future__ import annotations

import html
import re

from markupsafe import Markup

_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])_(.+?)_(?![\w*])")


def _inline(text: str) -> str:
    placeholders: list[str] = []

    def hold(match: re.Match[str]) -> str:
        placeholders.append(html.escape(match.group(1)))
        return f"\x00{len(placeholders) - 1}\x00"

    out = html.escape(_ESCAPED.sub(hold, text), quote=False)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    out = _ITALIC.sub(r"<em>\1</em>", out)
    return re.sub(r"\x00(\d+)\x00", lambda m: placeholders[int(m.group(1))], out)


def render(markdown: str | None) -> Markup:
    """HTML for a card detail: paragraphs, ``- `` lists, bold, italics."""
    blocks: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.append("<p>" + "<br>".join(_inline(line) for line in paragraph) + "</p>")
            paragraph.clear()
        if items:
            blocks.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for raw in (markdown or "").splitlines():
        line = raw.strip()
        if not line:
            flush()
        elif line.startswith(("- ", "* ")):
            if paragraph:
                flush()
            items.append(line[2:])
        else:
            if items:
                flush()
            paragraph.append(line)
    flush()
    return Markup("".join(blocks))  # noqa: S704 - built from escaped text only

"""A self-contained HTML page made of pluggable sections: one file, readable offline.

Every image is an inline PNG data URI and the only style is an inline <style>: no scripts, no
external styles, fonts or links, so the file can be attached to a CI job and opened anywhere.
Sections are (id, title, body) values; other stages (e.g. a dataset audit) add their own to the
list. Text goes through `html.escape`; bodies are built with the helpers below.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
from typing import Iterable, Sequence

_WORD = 48  # characters between line-break opportunities in a long word (`breakable`)
_LONG_WORD = re.compile(rf"(\S{{{_WORD + 1},}})")
_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
p { overflow-wrap: anywhere; }
th { background: #f3f3f3; }
img.plot { max-width: 100%; }
.gallery { display: flex; flex-wrap: wrap; gap: .8em; }
.gallery figure { margin: 0; width: 130px; font-size: .8em; text-align: center; }
.gallery figure.pair { width: 240px; }
.gallery figcaption { overflow-wrap: anywhere; }
.gallery img { width: 112px; height: 112px; image-rendering: pixelated; border: 1px solid #ccc; }
.fail { color: #b00020; font-weight: bold; } .pass { color: #1b5e20; font-weight: bold; }
.note { color: #555; }
"""


@dataclasses.dataclass(frozen=True)
class Section:
    """One part of the report.

    Attributes:
        id: the anchor (letters, digits, dashes).
        title: plain text (escaped when rendered).
        body: an HTML fragment, built with the escaping helpers of this module.
    """

    id: str
    title: str
    body: str


def render_page(title: str, sections: Sequence[Section]) -> str:
    """The whole document: a title, a table of contents and each section in order."""
    contents = " ".join(f'<a href="#{html.escape(section.id)}">{html.escape(section.title)}</a>'
                        for section in sections)
    parts = "\n".join(
        f'<section id="{html.escape(section.id)}">\n<h2>{html.escape(section.title)}</h2>\n'
        f"{section.body}\n</section>"
        for section in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<nav>{contents}</nav>\n{parts}\n</body>\n</html>\n"
    )


def png_image(data: bytes, alt: str, css_class: str = "plot") -> str:
    """An <img> holding `data` (PNG bytes) as a data URI."""
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<img class="{html.escape(css_class)}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{encoded}">')


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A <table>; every header and cell is text, escaped (`breakable`)."""
    head = "".join(f"<th>{html.escape(str(header))}</th>" for header in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{breakable(cell)}</td>" for cell in row)
                     + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def breakable(value: object) -> str:
    """`value` as escaped HTML text, a word longer than _WORD characters (a long class or file
    name) given a line-break opportunity every _WORD, so it wraps in its table cell instead of
    widening the page; numbers and short words never break."""
    pieces = _LONG_WORD.split(str(value))  # odd positions: the long words
    return "".join(
        "<wbr>".join(html.escape(piece[start:start + _WORD])
                     for start in range(0, len(piece), _WORD))
        if position % 2 else html.escape(piece) for position, piece in enumerate(pieces))


def paragraph(text: str, css_class: str = "") -> str:
    """A <p> of plain text."""
    attribute = f' class="{html.escape(css_class)}"' if css_class else ""
    return f"<p{attribute}>{html.escape(text)}</p>"

"""Self-contained HTML: inline CSS, images embedded as data URIs, no network references."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
.status-ok { color: #1a7f37; } .status-incorrect { color: #cf222e; font-weight: bold; }
.status-error { color: #8c564b; font-weight: bold; }
.status-oom, .status-timeout { color: #bf8700; }
.status-skipped { color: #777; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; font-family: ui-monospace, monospace; }
.scroll { overflow-x: auto; max-height: 70vh; }
.note { color: #555; }
tr.flagged td { background: #fff8c5; }
.warning { background: #fff8c5; border-left: 4px solid #bf8700; padding: .5em .8em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    """A complete HTML document around ``body``."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n")


MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}


def image(path: Path, alt: str) -> str:
    """``<img>`` with the figure (PNG or SVG) embedded, so the page stays whole when copied or
    mailed."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:{MIME[path.suffix.lower()]};base64,{data}" alt="{esc(alt)}">'


def figure(path: Path, caption: str) -> str:
    return f"<figure>{image(path, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def definitions(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column list of labels and values (run metadata)."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
    return f'<dl class="meta">{items}</dl>'


def table(frame: pd.DataFrame, text_columns: Sequence[str] = (), scroll: bool = False,
          row_notes: Sequence[str] | None = None) -> str:
    """``frame`` as an HTML table: numbers right-aligned to 4 significant digits, text left.

    A ``status`` column is coloured by status. ``row_notes``: a text per row; a row with one is
    highlighted and shows it on hover (a case's flags).
    """
    text = set(text_columns) | {c for c in frame.columns
                                if not pd.api.types.is_numeric_dtype(frame[c])}
    head = "".join(f'<th class="{"text" if c in text else "num"}">{esc(c)}</th>'
                   for c in frame.columns)
    body = []
    notes = list(row_notes) if row_notes is not None else [""] * len(frame)
    for row, note in zip(frame.itertuples(index=False), notes, strict=True):
        cells = []
        for column, value in zip(frame.columns, row, strict=True):
            css = ["text"] if column in text else []
            if column == "status":
                css.append(f"status-{value}")
            cells.append(f'<td class="{" ".join(css)}">{esc(number(value))}</td>')
        flagged = f' class="flagged" title="{esc(note)}"' if note else ""
        body.append(f"<tr{flagged}>{''.join(cells)}</tr>")
    out = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{out}</div>' if scroll else out


def number(value: Any, digits: int = 4) -> str:
    """Numbers to ``digits`` significant digits, NaN/None as empty, the rest as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)

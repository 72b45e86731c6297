"""Self-contained HTML: inline CSS, images embedded as data URIs, no network references."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from reports.columns import Col, column_text, missing, plain, sort_key
from reports.columns import auto as columns_auto

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } .subtitle { color: #555; margin-top: 0; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; vertical-align: top;
         white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; z-index: 1; }
th[title] { text-decoration: underline dotted #999; }
td.text, th.text { text-align: left; }
td { background: #fff; } tr:nth-child(even) td { background: #fafafa; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; font-size: 9px; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; font-size: 9px; }
td.long { max-width: 28em; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
          cursor: pointer; }
td.long.open { white-space: normal; }
td.links { white-space: nowrap; }
.status-ok { color: #1a7f37; } .status-incorrect { color: #cf222e; font-weight: bold; }
.status-error { color: #8c564b; font-weight: bold; }
.status-oom, .status-timeout { color: #bf8700; }
.status-skipped { color: #777; }
figure { margin: 1em 0 2em; scroll-margin-top: 1em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figure:target img { outline: 3px solid #bf8700; }
figcaption { color: #555; font-size: 13px; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; font-family: ui-monospace, monospace;
  overflow-wrap: anywhere; }
.scroll { overflow: auto; max-height: 75vh; max-width: 100%; border: 1px solid #eee; }
.scroll table { margin: 0; }
.fit { overflow-x: auto; max-width: 100%; } .fit table { margin: .6em 0 1.2em; }
table.wide td:first-child, table.wide th:first-child { position: sticky; left: 0; }
table.wide th:first-child { z-index: 2; }
div.filter { margin: .6em 0 .3em; } input.filter { width: 28em; padding: 3px 6px; }
.shown { color: #555; font-size: 12.5px; }
.note { color: #555; }
tr.flagged td { background: #fff8c5; }
.warning { background: #fff8c5; border-left: 4px solid #bf8700; padding: .5em .8em; }
table.verdict td.text { white-space: normal; min-width: 8em; max-width: 26em; }
.good { color: #1a7f37; } .bad { color: #cf222e; }
p.good, p.bad { font-size: 1.2em; font-weight: 600; }
nav.toc { font-size: 13px; color: #555; } nav.toc a { margin-right: .8em; }
"""

#: sorting, filtering and long cells; inline, so the page works with no network access
SCRIPT = """
(() => {
  const value = (row, i) => { const c = row.cells[i]; return c.dataset.v ?? c.textContent; };
  for (const t of document.querySelectorAll('table.sortable')) {
    t.tHead.querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => {
      const up = th.getAttribute('aria-sort') !== 'ascending';
      t.tHead.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
      th.setAttribute('aria-sort', up ? 'ascending' : 'descending');
      const num = th.classList.contains('num'), dir = up ? 1 : -1;
      const rows = Array.from(t.tBodies[0].rows);
      rows.sort((a, b) => {
        const x = value(a, i), y = value(b, i);
        if (x === '' || y === '') return (x === '') - (y === '');  // empty cells last
        return dir * (num ? parseFloat(x) - parseFloat(y)
                          : x.localeCompare(y, undefined, {numeric: true}));
      });
      for (const r of rows) t.tBodies[0].appendChild(r);
    }));
  }
  for (const box of document.querySelectorAll('input.filter')) {
    const t = document.getElementById(box.dataset.table), shown = box.nextElementSibling;
    box.addEventListener('input', () => {
      const words = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
      let n = 0;
      for (const r of t.tBodies[0].rows) {
        const text = r.textContent.toLowerCase();
        const keep = words.every(w => w.length > 1 && w[0] === '-' ? !text.includes(w.slice(1))
                                                                   : text.includes(w));
        r.hidden = !keep; n += keep;
      }
      shown.textContent = words.length ? `${n} of ${t.tBodies[0].rows.length} rows`
                                       : `${n} rows`;
    });
  }
  for (const c of document.querySelectorAll('td.long'))
    c.addEventListener('click', () => c.classList.toggle('open'));
})();
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, subtitle: str = "") -> str:
    """A complete HTML document around ``body``: its style and script inline, nothing fetched."""
    sub = f'<p class="subtitle">{esc(subtitle)}</p>\n' if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n<h1>{esc(title)}</h1>\n{sub}{body}\n<script>{SCRIPT}</script>\n"
            "</body></html>\n")


MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}


def image(path: Path, alt: str) -> str:
    """``<img>`` with the figure (PNG or SVG) embedded, so the page stays whole when copied or
    mailed."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:{MIME[path.suffix.lower()]};base64,{data}" alt="{esc(alt)}">'


def figure(path: Path, caption: str, ident: str = "") -> str:
    """A figure with its caption; ``ident``: its id, for links to it."""
    anchor = f' id="{esc(ident)}"' if ident else ""
    return (f"<figure{anchor}>{image(path, caption)}<figcaption>{esc(caption)}</figcaption>"
            "</figure>")


def definitions(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column list of labels and values (run metadata)."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
    return f'<dl class="meta">{items}</dl>'


def table(frame: pd.DataFrame, columns: Sequence[Col] | None = None, *, scroll: bool = False,
          row_notes: Sequence[str] | None = None, links: Sequence[str] | None = None,
          sortable: bool = False, filterable: bool = False, table_id: str = "") -> str:
    """``frame`` as an HTML table for people.

    ``columns``: what to show and how (``reports.columns``; default: every column, numbers
    plain). Numbers are right-aligned and carry their raw value, so a ``sortable`` table (click
    a header) sorts by number; a ``filterable`` one gets a box above it that keeps the rows
    containing all its words (``-word``: without). A ``status`` column is coloured; long text
    (reasons, flags) stays on one line, whole on hover or click. ``row_notes``: a text per row;
    a row with one is highlighted and shows it on hover (a case's flags). ``links``: HTML per
    row, a last column ``see``. ``scroll``: the table scrolls inside its own box, its first
    column and header kept in view; any table wider than the page scrolls sideways in its own
    box, never the page.
    """
    cols = list(columns) if columns is not None else columns_auto(frame)
    texts = [column_text(frame, c) for c in cols]
    head = "".join(f'<th class="{"num" if c.numeric else "text"}"'
                   f'{f" title={_attr(c.tip)}" if c.tip else ""}>{esc(c.title)}</th>'
                   for c in cols)
    if links is not None:
        head += '<th class="text">see</th>'
    notes = list(row_notes) if row_notes is not None else [""] * len(frame)
    body = []
    for i, note in enumerate(notes):
        cells = [_cell(c, frame[c.key].iloc[i], text[i]) for c, text in zip(cols, texts,
                                                                             strict=True)]
        if links is not None:
            cells.append(f'<td class="text links">{links[i]}</td>')
        flagged = f' class="flagged" title={_attr(note)}' if note else ""
        body.append(f"<tr{flagged}>{''.join(cells)}</tr>")
    classes = " ".join(k for k, on in (("sortable", sortable), ("wide", scroll)) if on)
    ident = f' id="{esc(table_id)}"' if table_id else ""
    out = (f'<table{ident} class="{classes}"><thead><tr>{head}</tr></thead>'
           f"<tbody>{''.join(body)}</tbody></table>")
    out = f'<div class="{"scroll" if scroll else "fit"}">{out}</div>'  # wide: scrolls in place
    if filterable and table_id:
        out = (f'<div class="filter"><input type="search" class="filter" '
               f'data-table="{esc(table_id)}" placeholder="filter rows: words that must all '
               f'appear, -word: must not" aria-label="filter rows"> '
               f'<span class="shown">{len(frame)} rows</span></div>{out}')
    return out


LONG_TEXT = frozenset({"reason", "flags", "note", "why"})


def _cell(col: Col, value: Any, text: str) -> str:
    css = [] if col.numeric else ["text"]
    if col.key == "status":
        css.append(f"status-{text}")
    title = ""
    if col.key in LONG_TEXT and text:
        css.append("long")
        title = f" title={_attr(text)}"
    sort = f' data-v="{sort_key(value)}"' if col.numeric else ""
    return f'<td class="{" ".join(css)}"{sort}{title}>{esc(text)}</td>'


def _attr(text: str) -> str:
    return f'"{esc(text)}"'


def number(value: Any, digits: int = 3) -> str:
    """A value as a report writes it: numbers to ``digits`` significant digits in positional
    notation (no ``e-06``), NaN/None as empty, the rest as text."""
    if missing(value):
        return ""
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int | float):
        return plain(float(value), digits) if not float(value).is_integer() else f"{value:.0f}"
    return str(value)

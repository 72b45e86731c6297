"""Markdown pieces for ``report.md`` and comparison summaries (GitHub-flavoured tables)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from reports.columns import Col, auto, column_text


def md_table(frame: pd.DataFrame, columns: Sequence[Col] | None = None) -> str:
    """``frame`` as a GitHub Markdown table, written as ``columns`` say (``reports.columns``;
    default: every column, numbers plain); numbers right-aligned, text left."""
    cols = list(columns) if columns is not None else auto(frame)
    head = "| " + " | ".join(c.title for c in cols) + " |"
    rule = "|" + "|".join("---:" if c.numeric else ":---" for c in cols) + "|"
    texts = [column_text(frame, c) for c in cols]
    rows = ["| " + " | ".join(_cell(t[i]) for t in texts) + " |" for i in range(len(frame))]
    return "\n".join([head, rule, *rows])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def definitions(rows: Sequence[tuple[str, str]]) -> str:
    """Run metadata as a compact two-column table."""
    lines = ["| | |", "|:---|:---|"]
    lines += [f"| {k} | `{_cell(str(v))}` |" for k, v in rows]
    return "\n".join(lines)

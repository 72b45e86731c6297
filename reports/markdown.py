"""Markdown pieces for ``report.md`` and comparison summaries (GitHub-flavoured tables)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from reports.html import number


def md_table(frame: pd.DataFrame, text_columns: Sequence[str] = ()) -> str:
    """``frame`` as a GitHub Markdown table; numbers to 4 significant digits, right-aligned."""
    text = set(text_columns) | {c for c in frame.columns
                                if not pd.api.types.is_numeric_dtype(frame[c])}
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join(":---" if c in text else "---:" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _cell(value: object) -> str:
    return number(value).replace("|", "\\|").replace("\n", " ")


def definitions(rows: Sequence[tuple[str, str]]) -> str:
    """Run metadata as a compact two-column table."""
    lines = ["| | |", "|:---|:---|"]
    lines += [f"| {k} | `{_cell(v)}` |" for k, v in rows]
    return "\n".join(lines)

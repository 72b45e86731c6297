"""Placeholder: being written (issue 18)."""

from __future__ import annotations

from pathlib import Path


def merge(runs: list[Path], out: Path) -> int:
    raise NotImplementedError

"""Run the command line as a user does: ``python cli.py ...`` in the project root."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    # Wide, fixed console so tables are never wrapped; the default inductor cache (the
    # project's) is kept so repeat runs do not compile again.
    return {**os.environ, "COLUMNS": "160"}


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def only_run_dir(out: Path) -> Path:
    """The single run directory a bench wrote under ``--out``."""
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """What to show when an assertion on a command fails."""
    return (f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}"
            f"\n--- stderr ---\n{proc.stderr[-3000:]}")

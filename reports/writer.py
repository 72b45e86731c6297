"""Write a run directory: ``results.csv``, ``samples.csv``, ``ops.csv`` and ``meta.json``.

A run that was interrupted (Ctrl-C, a kill, a power cut) is continued in place: ``open_resumed``
repairs the files (a line cut short by a power cut is dropped; samples and operators of cases
without a result row are removed, since those cases run again) and says which cases are done.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reports.record import Case, CaseResult
from reports.schema import (
    KEY_COLUMNS,
    MACHINES_FILE,
    OPS_COLUMNS,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    CsvAppender,
    RunDataError,
    complete_rows,
    load_machines,
    result_columns,
    write_json,
)


def new_run_dir(out: Path, name: str) -> Path:
    """A fresh ``out/<timestamp>-<name>`` directory (suffixed if it already exists)."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    path, n = out / stem, 1
    while path.exists():
        n += 1
        path = out / f"{stem}-{n}"
    path.mkdir(parents=True)
    return path


class RunWriter:
    """A sink for the runner: every result is on disk as soon as its case ends, and the record
    of the machine it ran on (from ``machines``, key -> record, which may grow as a cluster's
    machines join) in ``machines.json`` from its first row on."""

    def __init__(self, run_dir: Path, param_names: list[str], meta: dict[str, Any],
                 resumed: bool = False,
                 machines: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.run_dir, self.run_id = run_dir, run_dir.name
        self._machines = machines if machines is not None else {}
        self._written = load_machines(run_dir, meta) if (
            resumed and (run_dir / MACHINES_FILE).is_file()) else {}
        if resumed:  # keep the first part's record; note when it was taken up again
            self.meta = {**meta, "end_time": None,
                         "resumed": [*meta.get("resumed", []), _now()]}
        else:
            self.meta = {"schema_version": SCHEMA_VERSION, "run_id": self.run_id,
                         "start_time": _now(), "end_time": None, **meta}
        write_json(run_dir / "meta.json", self.meta)
        self._results = CsvAppender(run_dir / "results.csv", result_columns(param_names))
        self._samples = CsvAppender(run_dir / "samples.csv", SAMPLE_COLUMNS)
        self._ops: CsvAppender | None = None
        self.counts: dict[str, int] = {}

    @property
    def profile_dir(self) -> Path:
        return self.run_dir / "profile"

    def started(self, case: Case) -> None:
        pass

    def finished(self, result: CaseResult) -> None:
        row = {"run_id": self.run_id, **result.row()}
        if result.machine not in self._written:
            self._written[result.machine] = self._machines.get(result.machine, {})
            write_json(self.run_dir / MACHINES_FILE, self._written)
        if result.samples:
            key = {k: row[k] for k in KEY_COLUMNS}
            rounds = result.samples.rounds or (None,) * len(result.samples.seconds)
            self._samples.append({**key, "sample": i, "round": r, "seconds": s}
                                 for i, (s, r) in enumerate(zip(result.samples.seconds, rounds,
                                                                strict=True)))
        if result.ops:
            if self._ops is None:
                self._ops = CsvAppender(self.run_dir / "ops.csv", OPS_COLUMNS)
            self._ops.append(result.ops)
        self._results.append([row])  # last: a row in results.csv means the case is complete
        self.counts[result.status] = self.counts.get(result.status, 0) + 1

    def close(self, **extra: Any) -> None:
        self.meta.update(end_time=_now(), status_counts=self.counts, **extra)
        write_json(self.run_dir / "meta.json", self.meta)
        for appender in (self._results, self._samples, self._ops):
            if appender is not None:
                appender.close()


def open_resumed(run_dir: Path, param_names: list[str]) -> tuple[dict[str, Any],
                                                                 list[dict[str, str]]]:
    """Repair an interrupted run directory; return its ``meta.json`` and finished result rows.

    Raises ``RunDataError`` when ``run_dir`` is not a run directory this version can continue.
    """
    results, meta_path = run_dir / "results.csv", run_dir / "meta.json"
    if not results.is_file() or not meta_path.is_file():
        raise RunDataError(f"--resume {run_dir}: not a run directory (needs results.csv and "
                           "meta.json)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDataError(f"{meta_path}: unreadable ({exc})") from None
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    if version != SCHEMA_VERSION:
        raise RunDataError(f"--resume {run_dir}: written by another layerbench version "
                           f"(schema {version!r}, this one writes {SCHEMA_VERSION})")
    header, rows = _repaired(results)
    if header and header != result_columns(param_names):
        raise RunDataError(f"--resume {run_dir}: results.csv has other columns than this "
                           "configuration writes (another layerbench version?)")
    done = {tuple(row[k] for k in KEY_COLUMNS) for row in rows}
    for name, columns in (("samples.csv", SAMPLE_COLUMNS), ("ops.csv", OPS_COLUMNS)):
        path = run_dir / name  # rewritten with today's columns: the appenders add those
        if path.is_file():
            _, kept = _repaired(path)
            _rewrite(path, list(columns), [r for r in kept if tuple(r.get(k) for k in
                                                                    KEY_COLUMNS) in done])
    return meta, rows


def _repaired(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and complete rows of a CSV file; a last line cut short is cut off the file."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    return complete_rows(path)


def _rewrite(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

"""Write a run directory: ``results.csv``, ``samples.csv``, ``ops.csv`` and ``meta.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reports.schema import (
    KEY_COLUMNS,
    OPS_COLUMNS,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    CsvAppender,
    result_columns,
    write_json,
)

if TYPE_CHECKING:
    from suites.cases import Case
    from suites.runner import CaseResult


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
    """A sink for the runner: every result is on disk as soon as its case ends."""

    def __init__(self, run_dir: Path, param_names: list[str], meta: dict[str, Any]) -> None:
        self.run_dir, self.run_id = run_dir, run_dir.name
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
        if result.samples:
            key = {k: row[k] for k in KEY_COLUMNS}
            self._samples.append({**key, "sample": i, "seconds": s}
                                 for i, s in enumerate(result.samples.seconds))
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

"""The run directory's files: their columns, the rules that read them, the appender, the loader.

``results.csv`` gets one row per case, appended and flushed to disk as each case ends, so an
interrupted run still leaves every finished case in a valid file. The rules every reader and
writer shares live here, each once: which statuses carry a time or fail a run, which case is
the baseline of ``speedup_vs_builtin``, and which precision (and so which tolerance and which
roofline peak) a case computes in.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from reports.outcome import EXIT_FAILED, EXIT_OK, UsageError

SCHEMA_VERSION = 1

KEY_COLUMNS = ("layer", "impl", "compile", "device", "dtype", "mode", "case")
#: where ``bench --profile`` puts a case's traces and profile page: ``profile/<trace_name>/``
PROFILE_DIR = "profile"


def trace_name(key: Sequence[str]) -> str:
    """A file-system-safe name for a case's profile directory (one TensorBoard run per case),
    from its key columns (``KEY_COLUMNS`` order)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(str(k) for k in key))

RESULT_COLUMNS = (
    "status", "reason", "median_ms", "iqr_ms", "min_ms", "mean_ms", "ci_lo_ms", "ci_hi_ms",
    "n_samples", "calls_per_sample", "compile_s", "flops", "bytes", "gflops", "gbps",
    "roofline_frac", "speedup_vs_builtin", "speedup_lo", "speedup_hi", "max_abs_err", "rel_err",
    "grad_max_abs_err", "grad_rel_err", "rtol", "atol", "peak_mem_bytes", "predicted_s",
    "predicted_call_s", "op_calls", "threads", "seed", "precision", "busy_cores", "stable",
    "flags", "wall_ms", "tf32", "peak_rss_bytes", "machine",
)
#: columns of text; every other result column is a number (empty: not measured)
TEXT_COLUMNS = ("status", "reason", "flags", "machine")
# Added after the first runs were written: absent columns load as empty.
OPTIONAL_COLUMNS = ("predicted_call_s", "op_calls", "ci_lo_ms", "ci_hi_ms", "speedup_lo",
                    "speedup_hi", "precision", "busy_cores", "stable", "flags", "wall_ms",
                    "tf32", "peak_rss_bytes", "machine")
#: ``machines.json``: each machine a run's rows ran on (the ``machine`` column is its key): host,
#: CPU, cores, GPUs, driver and library versions (``suites.environment.machine_info``) and the
#: devices' measured ceilings (``calibration``)
MACHINES_FILE = "machines.json"
#: ``round``: the interleaving round a sample was taken in (samples of one size that share a
#: round were taken back to back, in an order rotated every round)
SAMPLE_COLUMNS = (*KEY_COLUMNS, "sample", "round", "seconds")
OPTIONAL_SAMPLE_COLUMNS = ("round",)
#: ``device_type``: ``cpu`` for an operator, the device's (``cuda``) for a kernel, copy or
#: memset: on a GPU each kernel has its row and is in its operator's ``self_device_us`` too
OPS_COLUMNS = (*KEY_COLUMNS, "profiled_case", "op", "calls", "self_cpu_us", "cpu_total_us",
               "self_device_us", "device_total_us", "self_cpu_mem_bytes", "note", "device_type")
OPTIONAL_OPS_COLUMNS = ("device_type",)
STATUSES = ("ok", "incorrect", "error", "oom", "timeout", "skipped")
#: statuses with a measured time (a wrong implementation is still timed)
TIMED = ("ok", "incorrect")
#: statuses that make a run fail (exit 1): oom, timeout and skipped are results, not failures
FAILED = ("incorrect", "error")
NUMERIC_COLUMNS = tuple(c for c in RESULT_COLUMNS if c not in TEXT_COLUMNS)

#: the implementation every other is compared with, eager (``speedup_vs_builtin``)
BASELINE_IMPL = "builtin"


def is_baseline(impl: str, compile_mode: str) -> bool:
    """Whether a row is its size's baseline: the eager builtin."""
    return impl == BASELINE_IMPL and compile_mode == "none"


def baseline_rows(frame: pd.DataFrame) -> pd.Series:
    """``is_baseline`` of every row of a frame with ``impl`` and ``compile`` columns."""
    return (frame["impl"] == BASELINE_IMPL) & (frame["compile"] == "none")


def device_kind(device: str) -> str:
    """``cuda:1`` -> ``cuda``: the kind of a device as written in the run files."""
    return device.partition(":")[0]


def precision(dtype: str, device: str, tf32: bool | float | Mapping[str, Any] | None) -> str:
    """What a case computes in: its dtype, or ``tf32`` for float32 on CUDA where the case ran
    with TF32 allowed. It picks the correctness tolerance and the matmul peak of the roofline.

    ``tf32`` is the row's ``tf32`` column (1 or 0; NaN or None: not recorded). For a run written
    before rows recorded it, pass the run's flags (``meta.json``, ``machine.tf32``): the case is
    then taken as TF32 where any library was allowed it, as such runs assumed.
    """
    if isinstance(tf32, Mapping):
        tf32 = bool(tf32.get("cuda_matmul_allow_tf32") or tf32.get("cudnn_allow_tf32"))
    allowed = tf32 is not None and tf32 == tf32 and bool(tf32)  # NaN != NaN: not recorded
    if dtype == "float32" and device_kind(device) == "cuda" and allowed:
        return "tf32"
    return dtype


def result_columns(param_names: Iterable[str]) -> list[str]:
    """``results.csv`` header: run id, case key, ``p_<param>`` per size parameter, results."""
    params = list(dict.fromkeys(f"p_{p}" for p in param_names))
    return ["run_id", *KEY_COLUMNS, *params, *RESULT_COLUMNS]


class CsvAppender:
    """A CSV file that gets whole rows appended and flushed to disk, one at a time."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path, self.columns = path, list(columns)
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")
        if new:
            self._writer.writeheader()
            self._flush()

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._writer.writerow({k: _cell(row.get(k)) for k in self.columns})
        self._flush()

    def _flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(float(value))  # shortest round-trip text, also for numpy floats
    return value


def complete_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file's header and complete rows (a line cut short by a power cut is left out);
    ``RunDataError`` where it cannot be read."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if None not in row and None not in row.values()]
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunDataError(f"{path}: unreadable ({exc})") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


class RunDataError(UsageError):
    """A run directory that is missing, corrupt, empty or of another schema version."""


def load_run(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``results.csv`` as a DataFrame, and ``meta.json``; ``RunDataError`` if unusable."""
    run_dir = Path(run_dir)
    results, meta_path = run_dir / "results.csv", run_dir / "meta.json"
    if not results.is_file() or not meta_path.is_file():
        raise RunDataError(f"{run_dir}: not a run directory (needs results.csv and meta.json)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDataError(f"{meta_path}: unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise RunDataError(f"{meta_path}: not a JSON object")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise RunDataError(f"{run_dir}: schema version {meta.get('schema_version')!r}, "
                           f"this layerbench reads version {SCHEMA_VERSION}")
    try:
        frame = pd.read_csv(results, keep_default_na=False, na_values=[""])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise RunDataError(f"{results}: unreadable ({exc})") from None
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = math.nan
    frame["flags"] = frame["flags"].astype(object).fillna("").astype(str)
    # rows from before the column ran on the one machine meta.json describes
    frame["machine"] = frame["machine"].astype(object).fillna(machine_key_of(meta)).astype(str)
    missing = [c for c in ("run_id", *KEY_COLUMNS, *RESULT_COLUMNS) if c not in frame.columns]
    if missing:
        raise RunDataError(f"{results}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise RunDataError(f"{results}: no results")
    bad = [c for c in NUMERIC_COLUMNS if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise RunDataError(f"{results}: non-numeric values in {', '.join(bad)} (corrupt file?)")
    unknown = sorted(set(frame["status"]) - set(STATUSES))
    if unknown:
        raise RunDataError(f"{results}: unknown status {', '.join(map(repr, unknown))}")
    return frame, meta


def machine_key_of(meta: Mapping[str, Any]) -> str:
    """The ``machine`` key of a run's own machine (the one in its ``meta.json``)."""
    machine = meta.get("machine") or {}
    return str(machine.get("key") or machine.get("host") or "local")


def load_machines(run_dir: str | Path, meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``machines.json`` of a run (machine key -> its description); for a run written before it,
    the one machine of ``meta.json``, with the run's ceilings."""
    path = Path(run_dir) / MACHINES_FILE
    if not path.is_file():
        return {machine_key_of(meta): {**(meta.get("machine") or {}),
                                       "calibration": meta.get("calibration") or {}}}
    try:
        machines = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDataError(f"{path}: unreadable ({exc})") from None
    if not isinstance(machines, dict) or not all(isinstance(v, dict) for v in machines.values()):
        raise RunDataError(f"{path}: not a JSON object of machines")
    return machines


def exit_code(results: pd.DataFrame) -> int:
    """1 when any case of a run is ``incorrect`` or ``error`` (``FAILED``), else 0."""
    return EXIT_FAILED if results["status"].isin(FAILED).any() else EXIT_OK


def load_samples(run_dir: str | Path) -> pd.DataFrame:
    """``samples.csv`` (one row per timing sample, in seconds per call); empty if none."""
    path = Path(run_dir) / "samples.csv"
    frame = _optional_table(path, SAMPLE_COLUMNS, optional=OPTIONAL_SAMPLE_COLUMNS)
    if len(frame) and not pd.api.types.is_numeric_dtype(frame["seconds"]):
        raise RunDataError(f"{path}: non-numeric seconds")
    return frame


def load_ops(run_dir: str | Path) -> pd.DataFrame:
    """``ops.csv`` (operators per profiled case, per call of the case); empty if not profiled.
    A column of ``OPTIONAL_OPS_COLUMNS`` an older run lacks loads empty."""
    return _optional_table(Path(run_dir) / "ops.csv", OPS_COLUMNS,
                           {c: str for c in (*KEY_COLUMNS, "profiled_case", "op", "note",
                                             "device_type")}, optional=OPTIONAL_OPS_COLUMNS)


def _optional_table(path: Path, columns: Sequence[str], dtype: dict[str, type] | None = None,
                    optional: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV a run may lack: empty with ``columns`` when absent; ``RunDataError`` when bad or
    missing one of ``columns`` other than the ``optional`` ones (added since: empty when
    absent)."""
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(columns))
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=dtype)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise RunDataError(f"{path}: unreadable ({exc})") from None
    if missing := [c for c in columns if c not in frame.columns and c not in optional]:
        raise RunDataError(f"{path}: missing column(s) {', '.join(missing)}")
    for column in optional:
        if column not in frame.columns:
            frame[column] = math.nan
    return frame

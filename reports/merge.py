"""Join the run directories of one sweep's shards (``bench --shard K/N``) into one run directory.

Every input is read and checked before anything is written: bad input is a ``UsageError`` (one
line, exit 2) and leaves no trace. The merged run is written into a temporary sibling of ``out``
and renamed into place, so ``out`` is either complete or absent. Its ``results.csv`` is one run's:
every row's ``run_id`` is the merged run's (the writer's rule: ``run_id`` is the run directory's
name); which shard, run and machine each row came from stays in ``meta.json["merged"]`` and the
``machine`` column.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from reports.console import say
from reports.meta import machine_fingerprint
from reports.outcome import EXIT_OK, UsageError
from reports.schema import (
    KEY_COLUMNS,
    MACHINES_FILE,
    OPS_COLUMNS,
    PROFILE_DIR,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    CsvAppender,
    RunDataError,
    complete_rows,
    load_machines,
    load_ops,
    load_run,
    load_samples,
    write_json,
)

#: configuration fields that may differ between the shards of one sweep
PER_SHARD = ("shard", "out")


@dataclass(frozen=True)
class Part:
    """One input run as read: ``results.csv`` as text (its header and complete rows, exactly
    as written), ``meta.json``, its machines (key -> record) and which shard it is."""

    path: Path
    meta: dict[str, Any]
    header: list[str]
    rows: list[dict[str, str]]
    machines: dict[str, dict[str, Any]]
    shard: tuple[int, int]

    @property
    def keys(self) -> list[tuple[str, ...]]:
        return [tuple(row[k] for k in KEY_COLUMNS) for row in self.rows]

    @property
    def profiles(self) -> list[str]:
        folder = self.path / PROFILE_DIR
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def merge(runs: list[Path], out: Path) -> int:
    """The ``merge`` command: write the shards ``runs`` as one run directory ``out``; 0.

    Raises ``UsageError`` (nothing written) for fewer than two runs, a run given twice, an
    ``out`` that exists, an unreadable run, or runs that are not shards of one sweep: another
    schema or configuration, shards of different counts or overlapping, or one machine name
    for two machines. Missing shards are a warning: the merged run is partial.
    """
    parts = sorted(_read(runs, out), key=lambda p: p.shard)
    _check(parts)
    count = parts[0].shard[1]
    missing = sorted(set(range(1, count + 1)) - {p.shard[0] for p in parts})
    meta = _merged_meta(parts, out, [[k, count] for k in missing])
    _write(parts, out, meta)
    if missing:
        say(f"warning: shard(s) {', '.join(f'{k}/{count}' for k in missing)} missing: {out} "
            f"has the cases of {len(parts)} of {count} shards only", stderr=True)
    machines = sorted({row["machine"] for p in parts for row in p.rows})
    say(f"merged {len(parts)} runs ({sum(len(p.rows) for p in parts)} cases, machines: "
        f"{', '.join(machines)}) -> {out}")
    return EXIT_OK


def _read(runs: Sequence[Path], out: Path) -> list[Part]:
    """Each run, read and checked to be a readable run directory."""
    if len(runs) < 2:
        raise UsageError(f"merge needs the runs of at least two shards (got {len(runs)})")
    seen: dict[Path, Path] = {}
    for path in runs:
        if (first := seen.get(path.resolve())) is not None:
            also = f" (also as {first})" if first != path else ""
            raise UsageError(f"{path}: given twice{also}")
        seen[path.resolve()] = path
    if out.exists():
        raise UsageError(f"--out {out}: already exists; the merged run needs a new directory")
    return [_part(path) for path in runs]


def _part(path: Path) -> Part:
    _, meta = load_run(path)  # RunDataError: not a readable run
    load_samples(path)  # the readers' checks of the files copied below
    load_ops(path)
    header, rows = _table(path / "results.csv")
    machines = load_machines(path, meta)
    shard = (meta.get("config") or {}).get("shard") or (1, 1)  # older runs: the whole run
    try:
        index, count = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise RunDataError(f"{path}: unreadable shard {shard!r} in meta.json") from None
    return Part(path, meta, header, rows, machines, (index, count))


def _table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file's header and complete rows (a line cut short by a power cut is left out);
    empty for a file the run does not have."""
    return complete_rows(path) if path.is_file() else ([], [])


def _check(parts: list[Part]) -> None:
    """``UsageError`` unless ``parts`` (in shard order) are distinct shards of one sweep."""
    first = parts[0]
    for part in parts[1:]:
        if part.header != first.header:
            raise UsageError(f"different schemas: the results.csv columns of {first.path} and "
                             f"{part.path} differ ({_difference(first, part)})")
        config = {k: v for k, v in (first.meta.get("config") or {}).items()
                  if k not in PER_SHARD}
        other = {k: v for k, v in (part.meta.get("config") or {}).items() if k not in PER_SHARD}
        if found := _first_difference(config, other):
            raise UsageError(f"different configurations: {_says(found, first, part)}")
        if part.shard[1] != first.shard[1]:
            raise UsageError(f"shards of different sweeps: {first.path} is shard "
                             f"{_shard(first)}, {part.path} is shard {_shard(part)}")
    for a, b in itertools.pairwise(parts):  # sorted: a repeated shard is adjacent
        if a.shard == b.shard:
            raise UsageError(f"overlapping shards: {a.path} and {b.path} are both shard "
                             f"{_shard(a)}")
    _disjoint(parts, lambda p: ["/".join(key) for key in p.keys], "")
    _disjoint(parts, lambda p: p.profiles, f"{PROFILE_DIR}/")
    records: dict[str, tuple[Part, dict[str, Any]]] = {}
    for part in parts:
        for key, record in part.machines.items():
            seen, known = records.setdefault(key, (part, record))
            if found := _first_difference(machine_fingerprint(known),
                                          machine_fingerprint(record)):
                raise UsageError(f"machine {key!r} names two different machines "
                                 f"({_says(found, seen, part)}): set LAYERBENCH_MACHINE to a "
                                 "distinct name on each machine and run its shards again")


def _disjoint(parts: list[Part], items: Callable[[Part], Iterable[str]], prefix: str) -> None:
    """``UsageError`` when two parts share one of their ``items`` (case keys, profiles)."""
    owner: dict[str, Part] = {}
    for part in parts:
        for item in items(part):
            if (first := owner.setdefault(item, part)) is not part:
                raise UsageError(f"overlapping: {prefix}{item} in {first.path} and {part.path}")


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any],
                      prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first field (dotted, into nested dicts) whose values differ, with both values."""
    for name in dict.fromkeys([*a, *b]):
        va, vb = a.get(name), b.get(name)
        if isinstance(va, dict) and isinstance(vb, dict):
            if found := _first_difference(va, vb, f"{prefix}{name}."):
                return found
        elif va != vb:
            return f"{prefix}{name}", va, vb
    return None


def _says(found: tuple[str, Any, Any], a: Part, b: Part) -> str:
    """``seed: 0 in A, 1 in B``."""
    name, va, vb = found
    return f"{name}: {json.dumps(va)} in {a.path}, {json.dumps(vb)} in {b.path}"


def _difference(a: Part, b: Part) -> str:
    """``wall_ms only in A``: how two runs' ``results.csv`` headers differ."""
    only = [([c for c in x.header if c not in y.header], x) for x, y in ((a, b), (b, a))]
    return "; ".join(f"{', '.join(cols)} only in {x.path}" for cols, x in only if cols) or (
        "the same columns in another order")


def _shard(part: Part) -> str:
    return "/".join(map(str, part.shard))


def _merged_meta(parts: list[Part], out: Path, missing: list[list[int]]) -> dict[str, Any]:
    """``meta.json`` of the merged run: the first shard's machine, calibration and
    implementation order (what older readers use); the shared configuration as a whole run's;
    the span of all shards' times, their summed counts and load; and a ``merged`` record of
    each input and the ``missing_shards``."""
    first, metas = parts[0].meta, [p.meta for p in parts]
    counts: dict[str, int] = {}
    for meta in metas:
        for status, n in (meta.get("status_counts") or {}).items():
            counts[status] = counts.get(status, 0) + int(n)
    resumed = sorted(t for meta in metas for t in meta.get("resumed") or [])
    return {
        "schema_version": SCHEMA_VERSION, "run_id": out.name,
        "start_time": _in_time(parts, "start_time")[0].meta.get("start_time"),
        "end_time": None if any(m.get("end_time") is None for m in metas) else
        _in_time(parts, "end_time")[-1].meta["end_time"],
        "machine": first.get("machine"), "calibration": first.get("calibration"),
        "command": _unsharded(first.get("command") or []),
        "config": {**(first.get("config") or {}), "shard": [1, 1], "out": str(out.parent)},
        "impl_order": first.get("impl_order"),
        "executor": {"name": "merge", "text": f"{len(parts)} shard runs merged",
                     "executors": sorted({str((m.get("executor") or {}).get("name", "local"))
                                          for m in metas})},
        "status_counts": counts,
        "interrupted": any(m.get("interrupted") for m in metas),
        "load": _merged_load(parts),
        **({"resumed": resumed} if resumed else {}),
        "merged": {"runs": [{"path": str(p.path.resolve()),
                             "run_id": p.meta.get("run_id", p.path.name), "shard": list(p.shard),
                             "machines": sorted({row["machine"] for row in p.rows}),
                             "start_time": p.meta.get("start_time"),
                             "end_time": p.meta.get("end_time"),
                             "command": p.meta.get("command"),
                             "executor": p.meta.get("executor")} for p in parts],
                   "missing_shards": missing},
    }


def _in_time(parts: list[Part], field: str) -> list[Part]:
    """``parts`` in the order of their ``meta[field]`` (a time), earliest first."""
    try:
        return sorted(parts, key=lambda p: datetime.fromisoformat(str(p.meta.get(field))))
    except (TypeError, ValueError):  # a time unknown, in another format, or without its zone
        return sorted(parts, key=lambda p: str(p.meta.get(field)))


def _unsharded(command: list[str]) -> list[str]:
    """A shard's command line as the whole sweep's: without its ``--shard K/N``."""
    kept, value = [], False
    for arg in command:
        if not value and arg != "--shard" and not arg.startswith("--shard="):
            kept.append(arg)
        value = arg == "--shard"
    return kept


def _merged_load(parts: list[Part]) -> dict[str, Any] | None:
    """The shards' ``load`` records as one: counts summed, the busy cores' mean weighted by
    timed cases and their maximum, the load average at the first start and the last end,
    and each shard's note and warning (``shard K/N: ...``)."""
    loads = [(p, p.meta["load"]) for p in parts if p.meta.get("load")]
    if not loads:
        return None
    load = dict(loads[0][1])
    for name in ("imprecise_cases", "timed_cases", "unstable_cases", "disturbed_cases"):
        load[name] = sum(int(r.get(name) or 0) for _, r in loads)
    means = [(r["busy_cores_mean"], int(r.get("timed_cases") or 0)) for _, r in loads
             if isinstance(r.get("busy_cores_mean"), int | float)]
    weight = sum(n for _, n in means)
    load["busy_cores_mean"] = (sum(m * n for m, n in means) / weight if weight else
                               means[0][0] if means else None)
    load["busy_cores_max"] = max((r["busy_cores_max"] for _, r in loads
                                  if isinstance(r.get("busy_cores_max"), int | float)),
                                 default=None)
    timed = [p for p, _ in loads]
    load["loadavg_start"] = _in_time(timed, "start_time")[0].meta["load"].get("loadavg_start")
    load["loadavg_end"] = _in_time(timed, "end_time")[-1].meta["load"].get("loadavg_end")
    for flag in ("watched", "busy"):
        load[flag] = any(r.get(flag) for _, r in loads)
    for text in ("note", "warning"):
        said = [(p, r[text]) for p, r in loads if r.get(text)]
        load[text] = "; ".join(f"shard {_shard(p)}: {t}" for p, t in said) or None
    return load


def _write(parts: list[Part], out: Path, meta: dict[str, Any]) -> None:
    """Write the merged run into a temporary sibling of ``out``, then rename it into place."""
    scratch = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".merging",
                                        dir=out.parent))
        tmp = scratch / out.name
        tmp.mkdir()  # not the scratch folder itself: mkdtemp's is private (0700)
        _append(tmp / "results.csv", parts[0].header,
                ({**row, "run_id": out.name} for p in parts for row in p.rows))
        for name, columns in (("samples.csv", SAMPLE_COLUMNS), ("ops.csv", OPS_COLUMNS)):
            if any((p.path / name).is_file() for p in parts):
                _append(tmp / name, columns,
                        (row for p in parts for row in _table(p.path / name)[1]))
        machines: dict[str, dict[str, Any]] = {}
        for part in parts:
            machines.update({k: v for k, v in part.machines.items() if k not in machines})
        write_json(tmp / MACHINES_FILE, machines)
        for part in parts:
            if (part.path / PROFILE_DIR).is_dir():
                shutil.copytree(part.path / PROFILE_DIR, tmp / PROFILE_DIR, dirs_exist_ok=True)
        write_json(tmp / "meta.json", meta)
        tmp.rename(out)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write the merged run ({exc})") from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _append(path: Path, columns: Sequence[str], rows: Iterable[dict[str, str]]) -> None:
    """``rows`` under today's ``columns`` (a column an older input lacks is left empty)."""
    table = CsvAppender(path, columns)
    try:
        table.append(rows)
    finally:
        table.close()

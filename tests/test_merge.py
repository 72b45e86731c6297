"""``bench --shard K/N`` and ``merge``: the shards of a sweep partition its cases, and their runs
merge into one run that ``report`` and ``compare`` read like any other; bad input exits 2 with
one line and writes nothing.

The runs are real (``bench`` in this process, with tiny timing); error paths merge copies of
them with one thing changed.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reports.schema import KEY_COLUMNS, MACHINES_FILE, OPS_COLUMNS, SAMPLE_COLUMNS, trace_name
from suites.config import config_from_dict
from tests._cli import describe, invoke, invoke_all, one_line_error, read_csv

TINY = ("--min-time", "0.01", "--max-time", "0.05", "--quiet", "--no-report")
SWEEP = ("bench", "conv", "--preset", "quick", "--impl", "builtin,im2col", *TINY)
#: float32 and float64: four size families, enough for three shards
WIDE = ("bench", "conv", "--preset", "quick", "--impl", "builtin", "--dtype",
        "float32,float64", *TINY)

Key = tuple[str, ...]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    done = invoke_all(tmp_path_factory.mktemp("runs"), {
        "full": (*SWEEP, "--out", "{out}"),
        "one": (*SWEEP, "--shard", "1/2", "--out", "{out}"),
        "two": (*SWEEP, "--shard", "2/2", "--out", "{out}"),
        "one-again": (*SWEEP, "--shard", "1/2", "--out", "{out}"),
        "wide-1": (*WIDE, "--shard", "1/3", "--out", "{out}"),
        "wide-3": (*WIDE, "--shard", "3/3", "--out", "{out}"),
    })
    for name, run in done.items():
        assert run.proc.returncode == 0, f"{name}: {describe(run.proc)}"
    return {name: run.run_dir for name, run in done.items()}


@pytest.fixture(scope="module")
def merged(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "sweep"
    proc = invoke("merge", runs["one"], runs["two"], "--out", out)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip() == (f"merged 2 runs (4 cases, machines: {_machine(runs['one'])})"
                                   f" -> {out}"), describe(proc)
    return out


def _keys(run_dir: Path, name: str = "results.csv") -> list[Key]:
    _, rows = read_csv(run_dir / name)
    return [tuple(row[k] for k in KEY_COLUMNS) for row in rows]


def _meta(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))


def _machine(run_dir: Path) -> str:
    (key,) = {row["machine"] for row in read_csv(run_dir / "results.csv")[1]}
    return key


def test_two_shards_partition_the_sweep_by_size(runs: dict[str, Path]) -> None:
    one, two = _keys(runs["one"]), _keys(runs["two"])
    assert one and two
    assert set(one).isdisjoint(two)
    assert sorted(one + two) == sorted(_keys(runs["full"]))
    # a size family stays whole: every implementation of a size in the same shard
    assert {k[-1] for k in one}.isdisjoint({k[-1] for k in two})


def test_the_same_command_line_gives_the_same_partition(runs: dict[str, Path]) -> None:
    assert _keys(runs["one-again"]) == _keys(runs["one"])


@pytest.mark.parametrize("spec", ["0/2", "3/2", "a/b", "3/3"])
def test_a_shard_that_is_not_one_is_bad_usage(spec: str, tmp_path: Path) -> None:
    """K outside 1..N, not K/N, or a shard left empty (the quick sweep has two sizes)."""
    out = tmp_path / "out"
    line = one_line_error(invoke(*SWEEP, "--shard", spec, "--out", out))
    assert f"--shard {spec}" in line or f"--shard {spec!r}" in line, line
    assert not out.exists()


def test_merge_gives_the_whole_sweep_as_one_run(runs: dict[str, Path], merged: Path) -> None:
    keys = _keys(merged)
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(_keys(runs["full"]))
    header, rows = read_csv(merged / "results.csv")
    assert header == read_csv(runs["one"] / "results.csv")[0]
    assert {row["run_id"] for row in rows} == {merged.name}
    assert sorted(_keys(merged, "samples.csv")) == sorted(
        _keys(runs["one"], "samples.csv") + _keys(runs["two"], "samples.csv"))
    machines = json.loads((merged / MACHINES_FILE).read_text(encoding="utf-8"))
    assert {row["machine"] for row in rows} <= set(machines)
    meta, first = _meta(merged), _meta(runs["one"])
    assert meta["run_id"] == merged.name
    assert config_from_dict(meta["config"]).shard == (1, 1)  # what check and resume read
    assert {k: v for k, v in meta["config"].items() if k not in ("shard", "out")} == {
        k: v for k, v in first["config"].items() if k not in ("shard", "out")}
    assert sum(meta["status_counts"].values()) == len(rows)
    assert meta["impl_order"] == first["impl_order"]
    assert meta["start_time"] == first["start_time"]
    assert meta["end_time"] == _meta(runs["two"])["end_time"]
    assert "--shard" not in meta["command"]
    assert [r["shard"] for r in meta["merged"]["runs"]] == [[1, 2], [2, 2]]
    assert [r["run_id"] for r in meta["merged"]["runs"]] == [runs["one"].name, runs["two"].name]
    assert meta["merged"]["missing_shards"] == []


def test_the_order_of_the_runs_does_not_matter(runs: dict[str, Path], merged: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / merged.name
    proc = invoke("merge", runs["two"], runs["one"], "--out", out)
    assert proc.returncode == 0, describe(proc)
    for name in ("results.csv", "samples.csv", MACHINES_FILE):
        assert (out / name).read_bytes() == (merged / name).read_bytes(), name


def test_report_reads_the_merged_run(merged: Path) -> None:
    proc = invoke("report", merged)
    assert proc.returncode == 0, describe(proc)
    assert (merged / "report.html").stat().st_size > 0


def test_compare_matches_every_case_of_the_unsharded_run(runs: dict[str, Path], merged: Path,
                                                         tmp_path: Path) -> None:
    proc = invoke("compare", runs["full"], merged, "--basis", "absolute", "--out", tmp_path)
    assert proc.returncode in (0, 1), describe(proc)
    with (tmp_path / "compare.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(tuple(r[k] for k in KEY_COLUMNS) for r in rows) == sorted(_keys(runs["full"]))
    assert not {r["verdict"] for r in rows} & {"new", "missing"}


def test_missing_shards_merge_with_a_warning(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "partial"
    proc = invoke("merge", runs["wide-3"], runs["wide-1"], "--out", out)
    assert proc.returncode == 0, describe(proc)
    (warning,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert warning.startswith("warning: shard(s) 2/3 missing"), warning
    assert sorted(_keys(out)) == sorted(_keys(runs["wide-1"]) + _keys(runs["wide-3"]))
    meta = _meta(out)
    assert meta["merged"]["missing_shards"] == [[2, 3]]
    assert meta["config"]["shard"] == [1, 1]


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _profiled(run: Path, tmp: Path, older: bool) -> Path:
    """A copy of ``run`` as if profiled: an operator row and a trace of its first case; with
    ``older``, its samples.csv and ops.csv without the optional columns added since."""
    copy = Path(shutil.copytree(run, tmp / run.name))
    key = _keys(copy)[0]
    ops = [c for c in OPS_COLUMNS if not (older and c == "device_type")]
    _write_csv(copy / "ops.csv", ops, [{**dict(zip(KEY_COLUMNS, key, strict=True)),
                                        "profiled_case": "x", "op": "aten::conv2d", "calls": 1,
                                        "self_cpu_us": 5.0, "device_type": "cpu"}])
    header, rows = read_csv(copy / "samples.csv")
    _write_csv(copy / "samples.csv", [c for c in header if not (older and c == "round")], rows)
    (copy / "profile" / trace_name(key)).mkdir(parents=True)
    (copy / "profile" / trace_name(key) / "trace.json").write_text("{}", encoding="utf-8")
    return copy


def test_operators_and_traces_of_every_shard_are_kept(runs: dict[str, Path],
                                                      tmp_path: Path) -> None:
    older, newer = _profiled(runs["one"], tmp_path, True), _profiled(runs["two"], tmp_path, False)
    out = tmp_path / "merged"
    proc = invoke("merge", older, newer, "--out", out)
    assert proc.returncode == 0, describe(proc)
    header, ops = read_csv(out / "ops.csv")
    assert header == list(OPS_COLUMNS)
    assert [row["device_type"] for row in ops] == ["", "cpu"]
    header, samples = read_csv(out / "samples.csv")
    assert header == list(SAMPLE_COLUMNS)
    first = len(read_csv(older / "samples.csv")[1])
    assert len(samples) == first + len(read_csv(newer / "samples.csv")[1])
    assert {row["round"] for row in samples[:first]} == {""}
    assert "" not in {row["round"] for row in samples[first:]}
    assert sorted(p.name for p in (out / "profile").iterdir()) == sorted(
        trace_name(_keys(run)[0]) for run in (older, newer))


def _copy(run: Path, tmp: Path, change: Callable[[Path], None]) -> Path:
    copy = Path(shutil.copytree(run, tmp / "changed" / run.name))
    change(copy)
    return copy


def _meta_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def change(run_dir: Path) -> None:
        meta = _meta(run_dir)
        edit(meta)
        (run_dir / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return change


def _drop_column(run_dir: Path) -> None:
    header, rows = read_csv(run_dir / "results.csv")
    _write_csv(run_dir / "results.csv", [c for c in header if c != "wall_ms"], rows)


def _other_host(run_dir: Path) -> None:
    path = run_dir / MACHINES_FILE
    machines = json.loads(path.read_text(encoding="utf-8"))
    for record in machines.values():
        record["host"] = "elsewhere"
    path.write_text(json.dumps(machines), encoding="utf-8")


# name -> (the runs to merge, from the real runs and a scratch folder; what the error says)
BAD: dict[str, tuple[Callable[[dict[str, Path], Path], list[Path]], str]] = {
    "one-run": (lambda r, t: [r["one"]], "at least two"),
    "same-run-twice": (lambda r, t: [r["one"], r["one"]], "given twice"),
    "not-a-run": (lambda r, t: [r["one"], Path(shutil.copytree(r["two"], t / "x",
                  ignore=shutil.ignore_patterns("results.csv")))], "not a run directory"),
    "other-schema-version": (lambda r, t: [r["one"], _copy(r["two"], t, _meta_edit(
        lambda m: m.update(schema_version=2)))], "schema version 2"),
    "other-columns": (lambda r, t: [r["one"], _copy(r["two"], t, _drop_column)],
                      "(wall_ms only in "),
    "other-seed": (lambda r, t: [r["one"], _copy(r["two"], t, _meta_edit(
        lambda m: m["config"].update(seed=1)))], "different configurations: seed: 0 in"),
    "other-timing": (lambda r, t: [r["one"], _copy(r["two"], t, _meta_edit(
        lambda m: m["config"]["timing"].update(min_time_s=1.0)))], "timing.min_time_s: 0.01"),
    "other-shard-count": (lambda r, t: [r["one"], _copy(r["two"], t, _meta_edit(
        lambda m: m["config"].update(shard=[2, 3])))], "is shard 2/3"),
    "same-shard-twice": (lambda r, t: [r["one"], r["one-again"]],
                         "are both shard 1/2"),
    "overlapping-cases": (lambda r, t: [r["one"], _copy(r["one"], t, _meta_edit(
        lambda m: m["config"].update(shard=[2, 2])))], "overlapping: conv/builtin/none/cpu"),
    "one-name-two-machines": (lambda r, t: [r["one"], _copy(r["two"], t, _other_host)],
                              "LAYERBENCH_MACHINE"),
}


@pytest.mark.parametrize("name", BAD)
def test_runs_that_are_not_shards_of_one_sweep_are_bad_input(
        name: str, runs: dict[str, Path], tmp_path: Path) -> None:
    make, expected = BAD[name]
    inputs, out = make(runs, tmp_path), tmp_path / "merged"
    line = one_line_error(invoke("merge", *inputs, "--out", out))
    assert expected in line, line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left


def test_an_existing_out_is_left_alone(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    line = one_line_error(invoke("merge", runs["one"], runs["two"], "--out", out))
    assert "already exists" in line, line
    assert list(out.iterdir()) == []

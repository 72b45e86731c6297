"""Run-directory files (appending, loading), size parsing and case planning."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from impls import REGISTRY
from reports.record import Case, CaseResult, Samples
from reports.schema import (
    BASELINE_IMPL,
    KEY_COLUMNS,
    RESULT_COLUMNS,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    CsvAppender,
    RunDataError,
    exit_code,
    is_baseline,
    load_run,
    precision,
    result_columns,
)
from reports.style import palette
from reports.writer import RunWriter, new_run_dir
from suites.cases import new_case, plan
from suites.config import BenchConfig
from suites.presets import notes_size, parse_size, preset_sizes

LAYER = REGISTRY.layer("conv")


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


# --- CsvAppender ------------------------------------------------------------------------------


def test_appender_writes_the_header_once_and_appends_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    columns = ["a", "b", "c"]
    first = CsvAppender(path, columns)
    first.append([{"a": 1, "b": "x", "c": 0.5}, {"a": 2, "b": "y", "c": 1.25}])
    first.close()
    again = CsvAppender(path, columns)  # a resumed run reopens the same file
    again.append([{"a": 3, "b": "z", "c": -2.0}])
    again.close()

    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines.count("a,b,c") == 1
    assert lines[0] == "a,b,c"
    header, rows = _read(path)
    assert header == columns
    assert [r["a"] for r in rows] == ["1", "2", "3"]
    assert [float(r["c"]) for r in rows] == [0.5, 1.25, -2.0]


def test_appender_rows_are_on_disk_before_close(tmp_path: Path) -> None:
    """An interrupted run still leaves every finished row in a valid file."""
    path = tmp_path / "results.csv"
    appender = CsvAppender(path, ["a", "b"])
    appender.append([{"a": 1, "b": 2}])
    _, rows = _read(path)  # read while still open
    assert rows == [{"a": "1", "b": "2"}]
    appender.close()


def test_appender_nan_and_missing_become_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    appender = CsvAppender(path, ["a", "b", "c", "d"])
    appender.append([{"a": float("nan"), "b": None, "d": 1.0}])
    appender.close()
    _, rows = _read(path)
    assert rows == [{"a": "", "b": "", "c": "", "d": "1.0"}]


def test_appender_floats_round_trip_exactly(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    values = [1 / 3, 1e-9 / 7, 123456.789e10, 2.0**-40]
    appender = CsvAppender(path, ["v"])
    appender.append({"v": v} for v in values)
    appender.close()
    _, rows = _read(path)
    assert [float(r["v"]) for r in rows] == values


def test_appender_writes_a_header_into_an_empty_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.touch()
    appender = CsvAppender(path, ["a"])
    appender.append([{"a": 1}])
    appender.close()
    assert path.read_text(encoding="utf-8").splitlines() == ["a", "1"]


# --- load_run ---------------------------------------------------------------------------------


def _case() -> Case:
    params = {"N": 1, "C_in": 1, "C_out": 2, "H": 8, "W": 8, "k": 3, "stride": 1, "padding": 0}
    return new_case("conv", "builtin", "none", params, "cpu", "float32", "fwd")


def _write_run(out: Path) -> Path:
    run_dir = new_run_dir(out, "conv-cpu")
    writer = RunWriter(run_dir, list(LAYER.params), {"command": ["test"]})
    result = CaseResult(_case(), samples=Samples((1e-3, 2e-3, 4e-3), calls_per_sample=5),
                        flops=10, bytes=20)
    writer.finished(result)
    writer.close()
    return run_dir


def test_a_written_run_loads(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path)
    frame, meta = load_run(run_dir)
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["command"] == ["test"]
    assert list(frame.columns) == result_columns(LAYER.params)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["run_id"] == run_dir.name
    assert row["status"] == "ok"
    assert row["median_ms"] == pytest.approx(2.0)
    assert row["n_samples"] == 3
    assert math.isnan(row["compile_s"])  # NaN written as an empty cell reads back as NaN
    header, samples = _read(run_dir / "samples.csv")
    assert header == list(SAMPLE_COLUMNS)
    assert [float(s["seconds"]) for s in samples] == [1e-3, 2e-3, 4e-3]


def test_a_second_run_dir_of_the_same_second_is_new(tmp_path: Path) -> None:
    first, second = new_run_dir(tmp_path, "conv-cpu"), new_run_dir(tmp_path, "conv-cpu")
    assert first != second
    assert first.is_dir() and second.is_dir()


def test_load_run_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RunDataError):
        load_run(tmp_path / "nope")


def test_load_run_rejects_a_directory_without_meta(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path)
    (run_dir / "meta.json").unlink()
    with pytest.raises(RunDataError):
        load_run(run_dir)


@pytest.mark.parametrize("content", [b"{not json", b"", b"[]", b"\xff\xfe\x00{}"],
                         ids=["truncated", "empty", "json-list", "not-utf8"])
def test_load_run_rejects_a_corrupt_meta(tmp_path: Path, content: bytes) -> None:
    run_dir = _write_run(tmp_path)
    (run_dir / "meta.json").write_bytes(content)
    with pytest.raises(RunDataError):
        load_run(run_dir)


@pytest.mark.parametrize("version", [None, 0, SCHEMA_VERSION + 1, "1"])
def test_load_run_rejects_another_schema_version(tmp_path: Path, version: object) -> None:
    run_dir = _write_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    if version is None:
        del meta["schema_version"]
    else:
        meta["schema_version"] = version
    (run_dir / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(RunDataError, match="schema"):
        load_run(run_dir)


@pytest.mark.parametrize("dropped", ["status", "median_ms", "case", "run_id"])
def test_load_run_rejects_results_missing_a_column(tmp_path: Path, dropped: str) -> None:
    run_dir = _write_run(tmp_path)
    path = run_dir / "results.csv"
    header, rows = _read(path)
    kept = [c for c in header if c != dropped]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=kept, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(RunDataError, match=dropped):
        load_run(run_dir)


@pytest.mark.parametrize("content", [b"", None, b"\xff\xfe\x00garbage\n"],
                         ids=["zero-bytes", "header-only", "not-utf8"])
def test_load_run_rejects_an_empty_or_unreadable_results_file(tmp_path: Path,
                                                              content: bytes | None) -> None:
    run_dir = _write_run(tmp_path)
    path = run_dir / "results.csv"
    if content is None:
        content = (",".join(result_columns(LAYER.params)) + "\n").encode()
    path.write_bytes(content)
    with pytest.raises(RunDataError):
        load_run(run_dir)


def test_result_columns_follow_the_design() -> None:
    columns = result_columns(LAYER.params)
    assert columns[:8] == ["run_id", *KEY_COLUMNS]
    assert columns[8:8 + len(LAYER.params)] == [f"p_{p}" for p in LAYER.params]
    design = ["status", "reason", "median_ms", "iqr_ms", "min_ms", "mean_ms", "n_samples",
              "compile_s", "flops", "bytes", "gflops", "gbps", "roofline_frac",
              "speedup_vs_builtin", "max_abs_err", "rel_err", "grad_rel_err", "peak_mem_bytes",
              "threads", "seed"]
    assert set(design) <= set(RESULT_COLUMNS)
    assert len(set(columns)) == len(columns)


# --- parse_size -------------------------------------------------------------------------------


def test_parse_size_parses_integers() -> None:
    assert parse_size("N=8,H=32") == {"N": 8, "H": 32}
    assert parse_size(" N = 8 , C_in=3 ") == {"N": 8, "C_in": 3}
    assert parse_size("padding=0") == {"padding": 0}


def test_parse_size_overrides_the_base_without_changing_it() -> None:
    base = dict(notes_size("conv"))
    size = parse_size("N=2,H=12", base)
    assert size == {**notes_size("conv"), "N": 2, "H": 12}
    assert base == notes_size("conv")


@pytest.mark.parametrize("text", ["N8", "N=abc", "=3", "N=", "", "N=1.5", "N=8,,H=2", "N=8;H=2",
                                  "N:8"])
def test_parse_size_rejects_malformed_input(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert "\n" not in str(info.value)


def test_preset_sizes_reject_an_unknown_preset() -> None:
    with pytest.raises(KeyError, match="huge"):
        preset_sizes("conv", "huge")


def test_every_preset_includes_the_notes_size() -> None:
    for preset in ("quick", "default", "full"):
        assert notes_size("conv") in preset_sizes("conv", preset)


# --- plan -------------------------------------------------------------------------------------


def _groups(cases: list[Case]) -> list[list[Case]]:
    def group_key(c: Case) -> tuple:
        return (c.layer, c.device, c.dtype, c.mode, c.params)

    return [list(g) for _, g in itertools.groupby(cases, key=group_key)]


@pytest.mark.parametrize(("impls", "compile_modes"), [
    ((), ("none",)),
    (("im2col", "einsum"), ("none",)),  # builtin not named: still the baseline
    (("einsum", "builtin", "im2col"), ("none",)),  # builtin named last: still first
    (("im2col",), ("default",)),  # no eager case asked for at all
    (("builtin", "loops"), ("default", "none")),
])
def test_plan_puts_the_eager_builtin_first_in_every_group(
        impls: tuple[str, ...], compile_modes: tuple[str, ...]) -> None:
    config = BenchConfig(layers=("conv",), impls=impls, compile_modes=compile_modes,
                         preset="quick", dtypes=("float32", "bfloat16"), modes=("fwd", "fwdbwd"))
    cases = plan(config)
    groups = _groups(cases)
    sizes = preset_sizes("conv", "quick")
    assert len(groups) == 2 * 2 * len(sizes)  # every group is contiguous
    names = impls or tuple(i.name for i in REGISTRY.impls("conv"))
    for group in groups:
        first = group[0]
        assert (first.impl, first.compile) == (BASELINE_IMPL, "none")
        variants = [(c.impl, c.compile) for c in group]
        assert len(set(variants)) == len(variants)  # the baseline is not repeated
        wanted = {(n, m) for n in names for m in compile_modes} | {(BASELINE_IMPL, "none")}
        assert set(variants) == wanted
    assert len(cases) == len(set(cases))


def test_plan_with_a_custom_size_runs_exactly_that_size() -> None:
    size = parse_size("N=2,C_in=3,H=12,W=12", notes_size("conv"))
    config = BenchConfig(layers=("conv",), impls=("im2col",), size=tuple(size.items()))
    cases = plan(config)
    assert {c.label for c in cases} == {LAYER.label(size)}
    assert [c.impl for c in cases] == [BASELINE_IMPL, "im2col"]


def test_plan_rejects_unknown_names_and_nonsense_sizes() -> None:
    with pytest.raises(KeyError, match="nope"):
        plan(BenchConfig(layers=("conv",), impls=("nope",)))
    with pytest.raises(KeyError):
        plan(BenchConfig(layers=("nolayer",)))
    bad = tuple({**notes_size("conv"), "k": 100}.items())
    with pytest.raises(ValueError):
        plan(BenchConfig(layers=("conv",), size=bad))


# --- the rules every reader and writer shares ---------------------------------------------------


def test_precision_is_tf32_only_for_float32_on_cuda_with_tf32_allowed() -> None:
    on, off = {"cuda_matmul_allow_tf32": True}, {"cuda_matmul_allow_tf32": False}
    assert precision("float32", "cuda:1", on) == "tf32"
    assert precision("float32", "cuda", {"cudnn_allow_tf32": True}) == "tf32"
    assert precision("float32", "cuda", off) == "float32"
    assert precision("float32", "cpu", on) == "float32"
    assert precision("bfloat16", "cuda", on) == "bfloat16"


def test_only_the_eager_builtin_is_the_baseline() -> None:
    assert is_baseline(BASELINE_IMPL, "none")
    assert not is_baseline(BASELINE_IMPL, "default")
    assert not is_baseline("im2col", "none")
    assert _case().baseline == _case()


@pytest.mark.parametrize(("statuses", "code"), [
    (["ok", "skipped", "oom", "timeout"], 0), (["ok", "incorrect"], 1), (["error"], 1)])
def test_a_run_fails_on_a_wrong_answer_or_an_error_only(statuses: list[str], code: int) -> None:
    assert exit_code(pd.DataFrame({"status": statuses})) == code


def test_relate_divides_by_the_builtin_and_bounds_by_the_roofline() -> None:
    result = CaseResult(dataclasses.replace(_case(), impl="im2col"), samples=Samples((2e-3,), 1),
                        flops=4_000_000, bytes=1000)
    ceilings = {"matmul_gflops": {"float32": 100.0}, "copy_gbps": 10.0}
    result.relate(Samples((1e-3,), 1), ceilings=ceilings, tf32={})
    assert result.speedup_vs_builtin == pytest.approx(0.5)
    # 2 GFLOP/s achieved; intensity 4000 FLOP/B x 10 GB/s is past the 100 GFLOP/s peak
    assert result.roofline_frac == pytest.approx(2.0 / 100.0)
    untimed = CaseResult(_case())
    untimed.relate(Samples((1e-3,), 1), ceilings=ceilings, tf32={})
    assert math.isnan(untimed.speedup_vs_builtin) and math.isnan(untimed.roofline_frac)


def test_every_implementation_of_a_run_gets_its_own_colour() -> None:
    registered = REGISTRY.impl_order()
    colors = palette({"impl_order": registered}, ["mine", "theirs"])
    names = [*registered, "mine", "theirs"]
    assert len({colors.color(n) for n in names}) == len(names)
    assert colors.sorted(["theirs", "builtin", "loops"]) == ["loops", "builtin", "theirs"]
    # the same implementation keeps its colour whatever else a run has
    assert palette({"impl_order": registered}).color("im2col") == colors.color("im2col")
    assert len({palette({}, [f"i{k}" for k in range(40)]).color(f"i{k}")
                for k in range(40)}) == 40

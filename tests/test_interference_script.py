"""benchmarks/interference.py's analysis on fabricated runs, and its busy loops (no timing)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from suites.compilation import PROJECT_ROOT
from tests._runs import FakeCase, fake_run

_spec = importlib.util.spec_from_file_location("interference",
                                               PROJECT_ROOT / "benchmarks" / "interference.py")
assert _spec is not None and _spec.loader is not None
interference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(interference)

QUIET = {"load": {"cores": 2, "busy_cores_mean": 0.1, "busy": False, "warning": None}}
BUSY = {"load": {"cores": 2, "busy_cores_mean": 1.9, "busy": True,
                 "warning": "1.9 of 2 cores busy"}}


def run(path: Path, times_ms: dict[str, dict[str, float]], ci: float = 0.02,
        flags: dict[str, str] | None = None, stable: dict[str, int] | None = None,
        new_columns: bool = True, **meta: Any) -> Path:
    """A run: ``times_ms[case][impl]`` medians, intervals of +-``ci`` around them, ``flags``
    and ``stable`` per impl (``new_columns=False``: a run from before those columns)."""
    cases = [FakeCase(impl, case=case, seconds=[ms / 1e3] * 5)
             for case, impls in times_ms.items() for impl, ms in impls.items()]
    fake_run(path, cases, **meta)
    frame = pd.read_csv(path / "results.csv")
    new = ["ci_lo_ms", "ci_hi_ms", "speedup_lo", "speedup_hi", "stable", "flags"]
    frame = frame.drop(columns=[c for c in new if c in frame.columns])
    if new_columns:
        frame["ci_lo_ms"] = frame["median_ms"] * (1 - ci)
        frame["ci_hi_ms"] = frame["median_ms"] * (1 + ci)
        frame["stable"] = frame["impl"].map(stable or {}).fillna(1).astype(int)
        frame["flags"] = [(flags or {}).get(impl, "") for impl in frame["impl"]]
    frame.to_csv(path / "results.csv", index=False)
    return path


def record(path: Path, load: int, index: int, **compare: str) -> dict[str, Any]:
    return {"layer": "conv", "load": load, "index": index, "exit": 0, "wall_s": 10.0 + load,
            "run_dir": str(path), **compare}


def group(analysis: dict[str, Any], load: int) -> dict[str, Any]:
    (found,) = [g for g in analysis["groups"] if g["load"] == load]
    return found


QUIET_TIMES = {"N1": {"builtin": 1.0, "im2col": 2.0, "einsum": 4.0}}


def test_an_unflagged_case_off_by_30pct_is_confidently_wrong_a_flagged_one_is_not(
        tmp_path: Path) -> None:
    quiet = [record(run(tmp_path / f"q{i}", QUIET_TIMES, **QUIET), 0, i) for i in (1, 2)]
    # im2col x0.35 instead of x0.5 (30% off) in both; einsum 5% off (within 10%)
    slow = {"N1": {"builtin": 1.0, "im2col": 2.0 / 0.7, "einsum": 4.2}}
    loaded = [record(run(tmp_path / "l1", slow, **BUSY), 1, 1),
              record(run(tmp_path / "l2", slow, flags={"im2col": "interference: 1.9 busy"},
                         **BUSY), 1, 2),
              record(run(tmp_path / "l3", slow, stable={"im2col": 0}, **BUSY), 1, 3)]
    analysis = interference.analyse(quiet + loaded, [], tmp_path)
    busy = group(analysis, 1)
    assert (busy["compared_cases"], busy["off"], busy["confidently_wrong"]) == (6, 3, 1)
    (wrong,) = busy["wrong_cases"]
    assert wrong["run_dir"] == str(tmp_path / "l1") and "/im2col/" in wrong["case"]
    assert wrong["speedup"] == pytest.approx(0.35) and wrong["quiet_speedup"] == 0.5
    assert busy["flagged"] == 2 and busy["timed_cases"] == 9
    (goal,) = [g for g in analysis["goals"] if g["goal"].startswith("confidently wrong")]
    assert goal["measured"] == "1 of 6 (16.7%)" and goal["met"] is False


def test_best_agreement_counts_a_tie_as_agreement_and_another_separated_best_not(
        tmp_path: Path) -> None:
    # N1: im2col clearly best in both quiet runs; N2: the quiet intervals overlap (left out)
    times = {"N1": {"builtin": 1.0, "im2col": 0.5}, "N2": {"builtin": 1.0, "im2col": 0.99}}
    quiet = [record(run(tmp_path / f"q{i}", times, **QUIET), 0, i) for i in (1, 2)]
    other = {"N1": {"builtin": 0.5, "im2col": 1.0}, "N2": {"builtin": 1.0, "im2col": 0.5}}
    tie = {"N1": {"builtin": 0.9, "im2col": 1.0}, "N2": times["N2"]}
    loaded = [record(run(tmp_path / "other", other, **BUSY), 1, 1),
              record(run(tmp_path / "tie", tie, ci=0.2, **BUSY), 1, 2),
              record(run(tmp_path / "same", times, **BUSY), 1, 3)]
    best = group(interference.analyse(quiet + loaded, [], tmp_path), 1)["best"]
    assert (best["sizes"], best["sizes_separated"]) == (2, 1)
    assert (best["pairs"], best["agree"]) == (3, 2)
    (miss,) = best["disagreements"]
    assert (miss["size"], miss["quiet"], miss["loaded"]) == (
        "conv/cpu/float32/fwd/N1", "im2col+none", "builtin+none")


def test_busy_warning_fired_is_counted_per_run_and_judged_against_the_goal(
        tmp_path: Path) -> None:
    runs = [record(run(tmp_path / "q1", QUIET_TIMES, **QUIET), 0, 1),
            record(run(tmp_path / "q2", QUIET_TIMES, **BUSY), 0, 2),  # a false warning
            record(run(tmp_path / "l1", QUIET_TIMES, **BUSY), 1, 1),
            record(run(tmp_path / "l2", QUIET_TIMES, **QUIET), 1, 2)]  # a missed one
    analysis = interference.analyse(runs, [], tmp_path)
    assert group(analysis, 0)["warning_fired"] == 1 and group(analysis, 1)["warning_fired"] == 1
    (goal,) = [g for g in analysis["goals"] if g["goal"].startswith("busy warning")]
    assert goal["measured"].startswith("loaded 1/2, quiet 1/2") and goal["met"] is False


def test_slower_verdicts_and_gate_false_alarms_are_counted(tmp_path: Path) -> None:
    compare = tmp_path / "cmp"
    compare.mkdir()
    pd.DataFrame({"verdict": ["slower", "same", "faster", "slower", "suspicious"]}).to_csv(
        compare / "compare.csv", index=False)
    runs = [record(run(tmp_path / "q1", QUIET_TIMES, **QUIET), 0, 1),
            record(run(tmp_path / "l1", QUIET_TIMES, **BUSY), 1, 1, compare_dir="cmp")]
    checks = [{"index": 1, "exit": 0}, {"index": 2, "exit": 1}, {"index": 3, "exit": 2}]
    analysis = interference.analyse(runs, checks, tmp_path)
    assert (group(analysis, 1)["slower"], group(analysis, 1)["compared_runs"]) == (2, 1)
    assert group(analysis, 0)["compared_runs"] == 0
    assert analysis["gate"] == {"checks": 3, "false_alarms": 1, "other_exits": 1,
                                "check_dirs": [None, None, None]}


def test_runs_without_the_new_columns_say_n_a(tmp_path: Path) -> None:
    runs = [record(run(tmp_path / "q1", QUIET_TIMES, new_columns=False), 0, 1),
            record(run(tmp_path / "l1", QUIET_TIMES, new_columns=False), 1, 1)]
    analysis = interference.analyse(runs, [], tmp_path)
    busy = group(analysis, 1)
    assert busy["confidently_wrong"] is None and busy["best"] is None and busy["off"] == 0
    assert [g["met"] for g in analysis["goals"]] == [None] * 6
    text = interference.markdown(analysis, runs, [])
    assert "| 1 | 1 | 3 | n/a | 0 (0.0%) | n/a | n/a | n/a | n/a | 11.0 |" in text
    assert "n/a (no flags recorded)" in text


def test_analyse_only_rewrites_the_summary_from_interference_json(tmp_path: Path) -> None:
    runs = [record(run(tmp_path / "q1", QUIET_TIMES, **QUIET), 0, 1),
            {**record(run(tmp_path / "l1", QUIET_TIMES, **BUSY), 1, 1), "run_dir": "l1"}]
    (tmp_path / "interference.json").write_text(json.dumps({"runs": runs, "checks": []}))
    interference.main(["--analyse-only", str(tmp_path)])
    saved = json.loads((tmp_path / "interference.json").read_text())
    assert saved["analysis"]["loaded"]["warning_fired"] == 1
    assert "| 1 | 1 | 3 | 0 (0.0%) | 0 (0.0%) | 0 (0.0%) |" in (
        tmp_path / "interference.md").read_text()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_busy_loops_run_during_the_block_and_are_killed_after_even_on_an_error() -> None:
    with interference.busy_loops(2) as procs:
        pids = [p.pid for p in procs]
        assert len(set(pids)) == 2 and all(p.poll() is None for p in procs)
        assert not any(_gone(pid) for pid in pids)
    assert all(_gone(pid) for pid in pids)
    with pytest.raises(RuntimeError), interference.busy_loops(1) as procs:
        pid = procs[0].pid
        raise RuntimeError("interrupted")
    assert _gone(pid)


@pytest.mark.parametrize("loads", ["1,2", "0,-1", "0,x", "0,1,1", ""])
def test_bad_loads_are_refused(loads: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        interference.parser().parse_args(["--loads", loads])
    assert exited.value.code == 2 and "--loads" in capsys.readouterr().err


FAKE_CLI = '''\
import json, pathlib, sys
args = sys.argv[1:]
with open(pathlib.Path(__file__).with_name("calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
out = pathlib.Path(args[args.index("--out") + 1]) if "--out" in args else None
if args[0] == "bench":
    run = out / f"20260101-000000-{args[1]}-cpu"
    run.mkdir(parents=True)
    (run / "results.csv").write_text(
        "layer,impl,compile,device,dtype,mode,case,status,median_ms,speedup_vs_builtin\\n"
        f"{args[1]},builtin,none,cpu,float32,fwd,N1,ok,1.0,1.0\\n")
    (run / "meta.json").write_text("{}")
elif args[0] == "compare":
    out.mkdir(parents=True)
    (out / "compare.csv").write_text("verdict\\nsame\\n")
elif "--save-baseline" in args:
    base = pathlib.Path(args[args.index("--baseline") + 1])
    base.mkdir(parents=True)
    (base / "noise.csv").write_text("")
else:
    tries = sum(1 for _ in pathlib.Path(__file__).with_name("calls.jsonl").open())
    print("FAIL" if tries % 2 else "PASS", f"details: {out / str(tries) / 'check.md'}", sep="\\n")
    sys.exit(tries % 2)
'''


def test_a_run_interleaves_the_conditions_and_gates_beside_a_busy_loop(tmp_path: Path) -> None:
    cli = tmp_path / "old" / "cli.py"
    cli.parent.mkdir()
    cli.write_text(FAKE_CLI)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        interference.main(["--cli", str(cli), "--layers", "a,b", "--runs", "2", "--loads", "0,1",
                           "--checks", "2", "--threads", "1", "--out", str(tmp_path / "out")])
    finally:
        signal.signal(signal.SIGTERM, handler)
    calls = [json.loads(x) for x in (cli.parent / "calls.jsonl").read_text().splitlines()]
    benches = [c for c in calls if c[0] == "bench"]
    assert [(c[1], Path(c[c.index("--out") + 1]).name) for c in benches] == [
        ("a", "a-load0-1"), ("a", "a-load1-1"), ("b", "b-load0-1"), ("b", "b-load1-1"),
        ("a", "a-load0-2"), ("a", "a-load1-2"), ("b", "b-load0-2"), ("b", "b-load1-2")]
    assert all(c[c.index("--threads") + 1] == "1" and "--no-report" in c for c in benches)
    saved = json.loads((tmp_path / "out" / "interference.json").read_text())
    assert [r["rows"] for r in saved["runs"]] == [1] * 8
    assert sum(r.get("compare_dir") is not None for r in saved["runs"]) == 6  # not quiet #1
    assert saved["analysis"]["gate"]["checks"] == 2
    assert saved["analysis"]["gate"]["false_alarms"] == 1
    assert (tmp_path / "out" / "interference.md").read_text().startswith("# Timing under")


def test_wall_only_times_quiet_runs_of_another_checkout_and_skip_done_continues(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = tmp_path / "old" / "cli.py"
    cli.parent.mkdir()
    cli.write_text(FAKE_CLI)
    handler = signal.getsignal(signal.SIGTERM)
    common = ["--cli", str(cli), "--layers", "a", "--wall-only", "--out", str(tmp_path / "out")]
    try:
        interference.main([*common, "--runs", "1"])
        interference.main([*common, "--runs", "2", "--skip-done"])
    finally:
        signal.signal(signal.SIGTERM, handler)
    calls = [json.loads(x) for x in (cli.parent / "calls.jsonl").read_text().splitlines()]
    assert [Path(c[c.index("--out") + 1]).name for c in calls] == ["a-load0-1", "a-load0-2"]
    saved = json.loads((tmp_path / "out" / "wall.json").read_text())
    assert [r["load"] for r in saved["runs"]] == [0, 0]
    assert "a: wall s" in capsys.readouterr().out
    assert not (tmp_path / "out" / "interference.json").exists()


def test_a_run_that_wrote_no_results_is_counted_and_leaves_the_rest_intact(
        tmp_path: Path) -> None:
    empty = tmp_path / "crashed"
    empty.mkdir()
    (empty / "results.csv").write_text("")
    runs = [record(run(tmp_path / "q1", QUIET_TIMES, **QUIET), 0, 1),
            record(run(tmp_path / "l1", QUIET_TIMES, **BUSY), 1, 1),
            record(empty, 1, 2), {**record(empty, 1, 3), "run_dir": None}]
    busy = group(interference.analyse(runs, [], tmp_path), 1)
    assert (busy["runs"], busy["timed_cases"], busy["compared_cases"]) == (3, 3, 2)
    assert busy["confidently_wrong"] == 0 and busy["warning_fired"] == 1

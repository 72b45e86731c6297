"""Failures are data: faulty implementations, interrupted runs, ``--resume``, ``--seed``.

Fault injection goes through ``--impl-file tests/data/faulty_conv.py``: implementations that
raise, return NaN, hang, ask for 4 PiB, or kill their own process; and through ``PLANTED``,
written to a temporary file: one that calls ``sys.exit(4)``, one that raises the error torch
gives after an illegal memory access (``torch.AcceleratorError`` with CUDA's code 700,
fabricated on the CPU: the runner treats the context as lost whatever the device), and one that
leaks 300 MiB. Runs go through ``cli.main`` in this process, except the ones interrupted by a
signal, which run as ``python cli.py``.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from impls import REGISTRY
from reports.schema import KEY_COLUMNS, load_run, load_samples
from suites.cases import plan
from suites.config import BenchConfig
from suites.memory import RSS_LIMIT_ENV
from tests._cli import (
    ROOT,
    Done,
    cli_env,
    describe,
    invoke,
    invoke_all,
    one_line_error,
    only_run_dir,
    read_csv,
)

FAULTS = ROOT / "tests" / "data" / "faulty_conv.py"
TINY = "N=1,C_in=1,C_out=2,H=8,W=8"
FAST = ("--min-time", "0.05", "--max-time", "0.2", "--quiet", "--no-report")
# A run long enough to interrupt: 2 sizes x 2 modes x (builtin, slow), each in a worker.
LONG = ("bench", "conv", "--impl-file", FAULTS, "--impl", "slow", "--preset", "quick",
        "--mode", "fwd,fwdbwd", "--trials", "1", *FAST)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Done]:
    commands: dict[str, tuple[object, ...]] = {
        "faults": ("bench", "conv", "--impl-file", FAULTS, "--impl",
                   "raises,nan,sleeps,hog,killself", "--size", TINY, "--timeout", "4",
                   "--out", "{out}", *FAST),
        "in-process-timeout": ("bench", "conv", "--impl-file", FAULTS, "--impl", "sleeps",
                               "--no-isolate", "--size", TINY, "--timeout", "2", "--out",
                               "{out}", *FAST),
    }
    for name, seed in (("seed-a", 7), ("seed-b", 7), ("seed-c", 8)):
        commands[name] = ("bench", "conv", "--impl", "im2col", "--size", TINY, "--mode",
                          "fwd,fwdbwd", "--seed", seed, "--out", "{out}", *FAST)
    return invoke_all(tmp_path_factory.mktemp("failures"), commands)


def _rows(run_dir: Path) -> dict[str, dict[str, str]]:
    return {row["impl"]: row for row in read_csv(run_dir / "results.csv")[1]}


def test_every_failure_is_its_own_row_and_the_run_goes_on(jobs: dict[str, Done]) -> None:
    proc = jobs["faults"].proc
    assert proc.returncode == 1, describe(proc)  # an error and a wrong result: exit 1
    rows = _rows(jobs["faults"].run_dir)
    assert {impl: row["status"] for impl, row in rows.items()} == {
        "builtin": "ok", "raises": "error", "nan": "incorrect", "sleeps": "timeout",
        "hog": "oom", "killself": "error"}
    assert "RuntimeError: this kernel is not finished" in rows["raises"]["reason"]
    assert "NaN" in rows["nan"]["reason"]
    assert "4 s limit" in rows["sleeps"]["reason"] and "killed" in rows["sleeps"]["reason"]
    assert "allocate" in rows["hog"]["reason"]
    assert "SIGKILL" in rows["killself"]["reason"]
    assert float(rows["nan"]["median_ms"]) > 0  # a wrong result is still timed
    assert "Traceback" not in proc.stderr


def test_a_timeout_interrupts_a_case_without_isolation(jobs: dict[str, Done]) -> None:
    proc = jobs["in-process-timeout"].proc
    assert proc.returncode == 0, describe(proc)  # timeout is a result, not a failure
    rows = _rows(jobs["in-process-timeout"].run_dir)
    assert rows["sleeps"]["status"] == "timeout"
    assert "interrupted" in rows["sleeps"]["reason"]
    assert rows["builtin"]["status"] == "ok"


PLANTED = """
import os
import sys

import torch
import torch.nn.functional as F

from impls import register_impl

LEAKED = []


def _conv(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


def _witness(name):
    with open({pids!r}, "a", encoding="utf-8") as f:
        f.write(f"{{name}} {{os.getpid()}}\\n")


@register_impl("conv", "exits")
def conv2d_exits(x, weight, bias, stride, padding):
    sys.exit(4)


@register_impl("conv", "sticky")
def conv2d_sticky(x, weight, bias, stride, padding):
    _witness("sticky")
    error = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    error.error_code = 700  # cudaErrorIllegalAddress
    raise error


@register_impl("conv", "witness")
def conv2d_witness(x, weight, bias, stride, padding):
    _witness("witness")
    return _conv(x, weight, bias, stride, padding)


@register_impl("conv", "leaky")
def conv2d_leaky(x, weight, bias, stride, padding):
    if not LEAKED:  # once per process: 300 MiB, touched, kept for good
        LEAKED.append(torch.ones(300 << 18))
    return _conv(x, weight, bias, stride, padding)
"""


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Done]:
    root = tmp_path_factory.mktemp("planted")
    impl_file = root / "planted_conv.py"
    impl_file.write_text(PLANTED.format(pids=str(root / "pids.txt")), encoding="utf-8")
    common = ("--impl-file", impl_file, "--size", TINY, *FAST)
    done = invoke_all(root, {
        "in-process": ("bench", "conv", "--impl", "exits,sticky,im2col", "--no-isolate",
                       "--mode", "fwd,fwdbwd", "--out", "{out}", *common),
        "isolated": ("bench", "conv", "--impl", "exits,sticky,witness", "--isolate", "--out",
                     "{out}", *common)})
    out = root / "leaky"  # every worker replaced once it grew by 100 MiB
    out.mkdir()
    done["leaky"] = Done(invoke("bench", "conv", "--impl", "leaky", "--isolate", "--mode",
                                "fwd,fwdbwd", "--out", out, *common, env={RSS_LIMIT_ENV: "100"}),
                         out)
    return done


def test_sys_exit_in_a_case_is_an_error_row_and_the_run_goes_on(
        planted: dict[str, Done]) -> None:
    proc, run_dir = planted["in-process"].proc, planted["in-process"].run_dir
    assert proc.returncode == 1, describe(proc)  # failed cases; not the 4 the case asked for
    rows = read_csv(run_dir / "results.csv")[1]
    status = {(r["impl"], r["mode"]): r["status"] for r in rows}
    assert status == {(impl, mode): "ok" if impl in ("builtin", "im2col") else "error"
                      for impl in ("builtin", "exits", "sticky", "im2col")
                      for mode in ("fwd", "fwdbwd")}
    reasons = {r["impl"]: r["reason"] for r in rows}
    assert reasons["exits"].startswith("SystemExit: the implementation called sys.exit(4)")
    # a lost CUDA context stops CUDA cases only: the CPU cases after it ran
    assert reasons["sticky"].startswith("CUDA context lost"), reasons["sticky"]
    meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    assert meta["end_time"] and meta["status_counts"]["error"] == 4
    assert all(float(r["peak_rss_bytes"]) > 100 << 20 for r in rows if r["status"] == "ok")


def test_sys_exit_under_the_profiler_is_a_failure_not_the_exit_code(
        planted: dict[str, Done], tmp_path: Path) -> None:
    impl_file = planted["in-process"].out.parent / "planted_conv.py"
    proc = invoke("profile", "conv", "--impl", "exits", "--impl-file", impl_file, "--size", TINY,
                  "--out", tmp_path)
    assert proc.returncode == 1, describe(proc)
    assert "error: conv/exits failed under the profiler: SystemExit: 4" in proc.stderr


def test_an_isolated_worker_is_replaced_after_a_lost_cuda_context(
        planted: dict[str, Done]) -> None:
    proc, run_dir = planted["isolated"].proc, planted["isolated"].run_dir
    assert proc.returncode == 1, describe(proc)
    rows = _rows(run_dir)
    assert {impl: row["status"] for impl, row in rows.items()} == {
        "builtin": "ok", "exits": "error", "sticky": "error", "witness": "ok"}
    assert rows["sticky"]["reason"].startswith("CUDA context lost"), rows["sticky"]["reason"]
    assert "sys.exit(4)" in rows["exits"]["reason"]  # the worker's guard caught it, too
    calls = [line.split() for line in (run_dir.parent.parent / "pids.txt").read_text(
        encoding="utf-8").splitlines()]
    calls = [c for c in calls if c[1] != str(os.getpid())]  # the in-process run's are ours
    sticky = {pid for name, pid in calls if name == "sticky"}
    assert len(sticky) == 1 and calls[-1][0] == "witness" and calls[-1][1] not in sticky
    assert all(float(row["peak_rss_bytes"]) > 0 for row in rows.values()
               if row["status"] == "ok")


def test_a_worker_that_grew_past_the_limit_is_recycled(planted: dict[str, Done]) -> None:
    proc, run_dir = planted["leaky"].proc, planted["leaky"].run_dir
    assert proc.returncode == 0, describe(proc)
    rows = read_csv(run_dir / "results.csv")[1]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for row in rows:  # both groups: each in a worker that grew, each then replaced
        assert "worker recycled: its RSS grew" in row["flags"], row["flags"]
        assert "(limit 100 MiB" in row["flags"]
    for row in (r for r in rows if r["impl"] == "leaky"):
        # it leaks once per process: leaking again in the second group means a fresh worker
        left = float(row["flags"].split("this case left ")[1].split(" MiB")[0])
        assert left > 250, row["flags"]
        assert float(row["peak_rss_bytes"]) > 300 << 20


def test_an_impl_file_that_exits_as_it_imports_is_bad_input(tmp_path: Path) -> None:
    impl_file = tmp_path / "exits_early.py"
    impl_file.write_text("import sys\n\nsys.exit(3)\n", encoding="utf-8")
    for command in (("bench", "conv", "--size", TINY, "--out", tmp_path), ("list", "conv")):
        line = one_line_error(invoke(*command, "--impl-file", impl_file))
        assert str(impl_file) in line and "sys.exit(3)" in line, line
    assert not list(tmp_path.glob("*/results.csv"))


def test_the_seed_replays_the_same_inputs_and_weights(jobs: dict[str, Done]) -> None:
    runs = {name: read_csv(jobs[name].run_dir / "results.csv")[1]
            for name in ("seed-a", "seed-b", "seed-c")}
    for name, rows in runs.items():
        assert jobs[name].proc.returncode == 0, describe(jobs[name].proc)
        assert {r["seed"] for r in rows} == {"8" if name == "seed-c" else "7"}
    errors = {name: [(r["max_abs_err"], r["grad_max_abs_err"]) for r in rows]
              for name, rows in runs.items()}
    assert errors["seed-a"] == errors["seed-b"]  # same inputs: the same error, to the last bit
    assert errors["seed-a"] != errors["seed-c"]
    meta = json.loads((jobs["seed-a"].run_dir / "meta.json").read_text(encoding="utf-8"))
    assert meta["config"]["seed"] == 7


def _planned_keys() -> list[tuple[str, ...]]:
    config = BenchConfig(layers=("conv",), impls=("slow",), preset="quick",
                         modes=("fwd", "fwdbwd"))
    with REGISTRY.scoped():
        REGISTRY.load_file(FAULTS)
        return [c.key for c in plan(config)]


def _interrupt(out: Path, sig: signal.Signals) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Start the long run, wait for a random number of finished cases, then send ``sig``."""
    # A run started from a background job inherits SIGINT ignored (and Python then installs no
    # KeyboardInterrupt handler): give the run the default, as a terminal's Ctrl-C finds it.
    proc = subprocess.Popen([sys.executable, "cli.py", *map(str, LONG), "--out", str(out)],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # rows come as each size group ends (4 groups of 2 here): waiting for at most 3 leaves at
    # least two groups to interrupt
    wanted = random.Random(sig.value).randint(1, 3)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = list(out.glob("*/results.csv"))
        if dirs and len(dirs[0].read_text(encoding="utf-8").splitlines()) > wanted:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return only_run_dir(out), subprocess.CompletedProcess(proc.args, proc.returncode, stdout,
                                                          stderr)


def _check_complete(run_dir: Path) -> None:
    """Every planned case exactly once, and samples for exactly the timed ones."""
    results, _ = load_run(run_dir)
    keys = [tuple(r) for r in results[list(KEY_COLUMNS)].astype(str).itertuples(index=False)]
    assert sorted(keys) == sorted(_planned_keys())
    samples = load_samples(run_dir)
    counts = samples.groupby(list(KEY_COLUMNS)).size()
    for row in results.itertuples(index=False):
        key = tuple(str(getattr(row, k)) for k in KEY_COLUMNS)
        assert counts.get(key, 0) == row.n_samples, key


@dataclass
class Scenario:
    """A long run cut short one way, then resumed: what each step left."""

    run_dir: Path
    first: subprocess.CompletedProcess[str]  # the run that was cut short
    rows: list[dict[str, str]]  # results.csv as the cut left it
    resumed: subprocess.CompletedProcess[str]


def _resume(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "cli.py", "bench", "--resume", str(run_dir),
                           "--quiet", "--no-report"], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300, check=False)


def _interrupted(out: Path, sig: signal.Signals) -> Scenario:
    run_dir, proc = _interrupt(out, sig)
    rows = read_csv(run_dir / "results.csv")[1]
    return Scenario(run_dir, proc, rows, _resume(run_dir))


def _power_cut(out: Path) -> Scenario:
    """The whole run, then its last row cut in the middle and an orphan sample added."""
    proc = subprocess.run([sys.executable, "cli.py", *map(str, LONG), "--out", str(out)],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, describe(proc)
    run_dir = only_run_dir(out)
    results = run_dir / "results.csv"
    lines = results.read_text(encoding="utf-8").splitlines(keepends=True)
    results.write_text("".join(lines[:-2]) + lines[-2][:25], encoding="utf-8")  # 2 cases lost
    with (run_dir / "samples.csv").open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["conv", "ghost", "none", "cpu", "float32", "fwd", "N1", 0, 1.0])
    return Scenario(run_dir, proc, read_csv(results)[1], _resume(run_dir))


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scenario]:
    """The three scenarios at once (each is mostly process start-up and sleeps)."""
    root = tmp_path_factory.mktemp("interrupted")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {sig.name: pool.submit(_interrupted, root / sig.name, sig)
                   for sig in (signal.SIGINT, signal.SIGKILL)}
        futures["power-cut"] = pool.submit(_power_cut, root / "power-cut")
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_an_interrupted_run_keeps_its_rows_and_resumes(scenarios: dict[str, Scenario],
                                                       sig: signal.Signals) -> None:
    found = scenarios[sig.name]
    run_dir, proc, rows, resumed = found.run_dir, found.first, found.rows, found.resumed
    if sig == signal.SIGINT:
        assert proc.returncode == 130, describe(proc)
        assert "results.csv" in proc.stderr and "--resume" in proc.stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert 0 < len(rows) < len(_planned_keys()), "interrupted before the end"
    assert all(None not in row.values() for row in rows)  # no half-written line
    assert resumed.returncode == 0, describe(resumed)
    assert f"{len(rows)} of {len(_planned_keys())} cases already done" in resumed.stderr
    _check_complete(run_dir)
    finished = read_csv(run_dir / "results.csv")[1]
    assert finished[:len(rows)] == rows  # the first part is kept as it was
    meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    assert meta["resumed"] and meta["end_time"]


def test_resume_repairs_a_line_cut_short(scenarios: dict[str, Scenario]) -> None:
    """A power cut mid-write: the partial row and orphan samples go, the case runs again."""
    resumed = scenarios["power-cut"].resumed
    assert resumed.returncode == 0, describe(resumed)
    assert "2 cases -> " in resumed.stderr, resumed.stderr
    _check_complete(scenarios["power-cut"].run_dir)

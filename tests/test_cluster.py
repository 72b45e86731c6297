"""``bench --executor dask``: sweeps on Dask clusters bound to 127.0.0.1.

Two clusters: one a user starts (``dask scheduler`` and two ``dask worker`` processes posing as
two machines through ``LAYERBENCH_MACHINE``), and the local cluster ``--executor dask`` starts
itself. Every socket is bound to 127.0.0.1. ``.ci/run`` runs them (``-m cluster``).
"""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from impls import REGISTRY
from suites.presets import preset_sizes
from tests._cli import ROOT, cli_env, describe, invoke, only_run_dir, read_csv, run_cli

pytestmark = pytest.mark.cluster
distributed = pytest.importorskip("distributed")

IMPLS = ROOT / "tests" / "data" / "cluster_impls.py"
QUICK = ("--min-time", "0.01", "--max-time", "0.05", "--quiet", "--no-report")
ONE_SIZE = ("--size", "N=2,C_in=3,C_out=4,H=10,W=9")
MACHINES = ("m1", "m2")


def _worker_env(machine: str | None) -> dict[str, str]:
    env = {**cli_env(), "PYTHONPATH": str(ROOT)}
    if machine is not None:  # a worker as docs/scale-out.md starts one
        env.update(LAYERBENCH_MACHINE=machine, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    return env


def _start_cluster(tmp: Path, machines: tuple[str | None, ...]) -> tuple[str, list[Any]]:
    """A scheduler and one worker per entry of ``machines`` (None: a worker started without
    the settings layerbench needs), all on 127.0.0.1; the scheduler's address."""
    file = tmp / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen(
        [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(file)], env=_worker_env(None),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 60
    while not file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    address = json.loads(file.read_text())["address"]
    for machine in machines:
        procs.append(subprocess.Popen(
            [str(bin_dir / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
             "--no-dashboard", "--name", machine or "plain"], env=_worker_env(machine),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    with distributed.Client(address, timeout=30) as client:
        client.wait_for_workers(len(machines), timeout=60)
    return address, procs


def _stop(procs: list[Any]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait(30)


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    address, procs = _start_cluster(tmp_path_factory.mktemp("cluster"), MACHINES)
    try:
        yield address
    finally:
        _stop(procs)


def _keys(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
    return [(r["layer"], r["impl"], r["compile"], r["device"], r["dtype"], r["mode"], r["case"])
            for r in rows]


def test_two_machines_run_every_case_once_on_the_worker_that_says_so(
        two_machines: str, tmp_path: Path) -> None:
    proc = run_cli("bench", "conv", "--preset", "quick", "--dtype", "float32,float64",
                   "--impl", "builtin,im2col,whoami", "--impl-file", IMPLS, "--executor", "dask",
                   "--scheduler", two_machines, *QUICK, "--out", tmp_path, timeout=300)
    assert proc.returncode == 0, describe(proc)
    run_dir = only_run_dir(tmp_path)
    _, rows = read_csv(run_dir / "results.csv")
    with REGISTRY.scoped():
        labels = [REGISTRY.layer("conv").label(s) for s in preset_sizes("conv", "quick")]
    expected = [("conv", impl, "none", "cpu", dtype, "fwd", label) for dtype in
                ("float32", "float64") for label in labels for impl in ("builtin", "im2col",
                                                                          "whoami")]
    assert sorted(_keys(rows)) == sorted(expected)  # every case, exactly once
    for row in rows:
        assert row["machine"] in MACHINES
        if row["impl"] == "whoami":  # the worker's own word for where it ran
            assert row["status"] == "skipped" and row["reason"] == f"ran on {row['machine']}"
    families = collections.defaultdict(set)
    for row in rows:  # a size family runs on one machine: its speedups are that machine's
        families[(row["dtype"], row["case"])].add(row["machine"])
    assert all(len(m) == 1 for m in families.values())
    machines = json.loads((run_dir / "machines.json").read_text())
    assert set(machines) == {r["machine"] for r in rows}
    for key, record in machines.items():
        assert record["key"] == key and record["calibration"]["cpu"]["copy_gbps"] > 0
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["executor"]["name"] == "dask" and meta["executor"]["workers"] == 2
    assert meta["end_time"] is not None


def test_cuda_cases_need_a_worker_that_offers_a_gpu(two_machines: str, tmp_path: Path) -> None:
    done = invoke("bench", "conv", "--device", "cuda", "--executor", "dask", "--scheduler",
                  two_machines, "--out", tmp_path)
    assert done.returncode == 2, describe(done)
    assert "no Dask worker offers a GPU" in done.stderr and "--resources GPU=1" in done.stderr
    assert not any(tmp_path.iterdir())


def test_a_daemonic_worker_is_bad_input_with_the_fix(tmp_path: Path) -> None:
    address, procs = _start_cluster(tmp_path, (None,))
    try:
        done = invoke("bench", "conv", "--executor", "dask", "--scheduler", address,
                      "--out", tmp_path / "out")
    finally:
        _stop(procs)
    assert done.returncode == 2, describe(done)
    assert "DASK_DISTRIBUTED__WORKER__DAEMON=False" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_scheduler_that_does_not_answer_is_bad_input(tmp_path: Path) -> None:
    start = time.monotonic()
    done = invoke("bench", "conv", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9",
                  "--out", tmp_path)
    assert done.returncode == 2, describe(done)
    assert done.stderr.count("\n") == 1 and "no Dask scheduler answered within 10 s" in done.stderr
    assert time.monotonic() - start < 60
    assert not any(tmp_path.iterdir())


def test_a_worker_that_dies_gives_its_case_one_more_try_then_an_error_row(
        tmp_path: Path) -> None:
    marker = tmp_path / "died-once"
    proc = run_cli("bench", "conv", *ONE_SIZE, "--impl", "builtin,die_once,die_always",
                   "--impl-file", IMPLS, "--executor", "dask", *QUICK, "--out", tmp_path / "out",
                   env={"LAYERBENCH_TEST_MARKER": str(marker)}, timeout=300)
    assert proc.returncode == 1, describe(proc)  # an error row fails the run; it finished
    assert marker.is_file()  # die_once did kill a worker
    _, rows = read_csv(only_run_dir(tmp_path / "out") / "results.csv")
    status = {r["impl"]: r for r in rows}
    assert len(rows) == 3
    assert status["builtin"]["status"] == "ok" and status["die_once"]["status"] == "ok"
    lost = status["die_always"]
    assert lost["status"] == "error"
    assert "its Dask worker died while running it" in lost["reason"]
    machine = lost["machine"]
    assert machine and f"on {machine} (tcp://127.0.0.1:" in lost["reason"]


def test_ctrl_c_keeps_the_finished_rows_and_resume_finishes_on_the_cluster(
        tmp_path: Path) -> None:
    args = ["bench", "conv", "--preset", "quick", "--dtype", "float32,float64,bfloat16",
            "--impl", "builtin,im2col", "--executor", "dask", *QUICK, "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "cli.py", *args], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, results = time.monotonic() + 240, None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(tmp_path.glob("*/results.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:  # a header and two rows
            results = found[0]
            break
        time.sleep(0.2)
    assert results is not None, "no rows arrived"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    _, kept = read_csv(results)
    assert 2 <= len(kept) < 12 and "--resume" in err
    resumed = run_cli("bench", "--resume", results.parent, "--executor", "dask", "--quiet",
                      "--no-report", timeout=300)
    assert resumed.returncode == 0, describe(resumed)
    _, rows = read_csv(results)
    assert len(rows) == 12 and len(set(_keys(rows))) == 12
    assert _keys(rows)[:len(kept)] == _keys(kept)  # the first part's rows as they were

"""Profiling: ``python cli.py profile``, ``bench --profile`` and what they write and draw.

The operator counts and memory figures are checked against what the implementations must do
at a tiny conv size (the loops launch at least one operator per output element; im2col holds
its column matrix and its output at once), and TensorBoard's profiler plugin must list the
traces a run writes.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from reports.analysis import (
    OTHER_OPS,
    event_kinds,
    op_shares,
    profile_table,
    self_time_column,
    timed_ops,
)
from reports.profile_page import MEMORY_FILE, PAGE_FILE, SPANS_FILE, STEPS_FILE, write_run_pages
from reports.schema import OPS_COLUMNS, PROFILE_DIR, load_ops, load_run, trace_name
from suites import profile_run
from suites.profiling import ProfileSettings, listed, memory_use, op_row
from tests._cli import (
    Done,
    Outcome,
    describe,
    invoke,
    invoke_all,
    one_line_error,
    read_csv,
    run_cli,
)
from tests._profiles import GPU_KERNEL_US, gpu_ops

N, C_IN, C_OUT, H, W, K = 2, 1, 4, 8, 8, 3
TINY = f"N={N},C_in={C_IN},C_out={C_OUT},H={H},W={W},k={K},stride=1,padding=0"
H_OUT = W_OUT = H - K + 1
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Done]:
    commands: dict[str, tuple[object, ...]] = {
        "bench": ("bench", "conv", "--profile", "--impl", "builtin,loops,im2col", "--size",
                  TINY, "--min-time", "0.05", "--max-time", "0.2", "--trials", "1", "--out",
                  "{out}", "--quiet"),
        **{impl: ("profile", "conv", "--impl", impl, "--size", TINY, "--out", "{out}")
           for impl in ("im2col", "loops", "builtin")},
        "unknown-impl": ("profile", "conv", "--impl", "nope"),
        "over-budget": ("profile", "conv", "--impl", "loops", "--size", "N=64", "--budget",
                        "0.01"),
        "bad-schedule": ("profile", "conv", "--impl", "im2col", "--active", "0"),
        "bad-size": ("profile", "conv", "--impl", "im2col", "--size", "N=x"),
    }
    return invoke_all(tmp_path_factory.mktemp("profile"), commands)


@pytest.fixture(scope="module")
def as_a_user(tmp_path_factory: pytest.TempPathFactory) -> Done:
    """``python cli.py profile`` in a process of its own: its stderr as the terminal sees it
    (kineto writes to fd 2, past Python's ``sys.stderr``)."""
    out = tmp_path_factory.mktemp("profile-cli")
    proc = run_cli("profile", "conv", "--impl", "im2col", "--size", TINY, "--out", out)
    return Done(Outcome(proc.returncode, proc.stdout, proc.stderr), out)


def _meta(jobs: dict[str, Done], name: str) -> dict:
    proc = jobs[name].proc
    assert proc.returncode == 0, describe(proc)
    return json.loads((jobs[name].run_dir / "meta.json").read_text(encoding="utf-8"))


def test_profile_writes_traces_ops_and_figures(jobs: dict[str, Done]) -> None:
    proc, run_dir = jobs["im2col"].proc, jobs["im2col"].run_dir
    assert proc.returncode == 0, describe(proc)
    assert "top operators by self time" in proc.stdout
    assert f"tensorboard --logdir {run_dir / 'tb'}" in proc.stdout
    # the Chrome trace (Perfetto, chrome://tracing) and the TensorBoard one: same events
    chrome = json.loads((run_dir / "trace.json").read_text(encoding="utf-8"))
    names = {e.get("name") for e in chrome["traceEvents"]}
    assert "aten::im2col" in names
    (tb_trace,) = (run_dir / "tb").glob("*/*.pt.trace.json")
    assert json.loads(tb_trace.read_text(encoding="utf-8"))["traceEvents"]
    header, rows = read_csv(run_dir / "ops.csv")
    assert header == list(OPS_COLUMNS)
    by_op = {r["op"]: r for r in rows}
    assert float(by_op["aten::im2col"]["calls"]) == 1.0  # per call of the case, not in all
    assert all(r["case"] == r["profiled_case"] for r in rows)
    for figure in ("breakdown", "memory"):
        (path,) = (p for p in run_dir.iterdir()
                   if p.stem == figure and p.suffix in (".png", ".svg"))
        assert path.read_bytes().startswith(PNG if path.suffix == ".png" else b"<?xml")


def test_profile_peak_memory_holds_the_column_matrix(jobs: dict[str, Done]) -> None:
    meta = _meta(jobs, "im2col")
    cols = N * C_IN * K * K * H_OUT * W_OUT * 4  # float32 column matrix of F.unfold
    out = N * C_OUT * H_OUT * W_OUT * 4
    assert meta["peak_mem_bytes"] >= cols + out  # the GEMM's output while the columns live
    assert meta["peak_mem_bytes"] < 20 * (cols + out)


def test_profile_counts_one_operator_per_multiply_add_for_the_loops(jobs: dict[str, Done]) -> None:
    loops, builtin = _meta(jobs, "loops"), _meta(jobs, "builtin")
    assert builtin["op_calls"] <= 3
    assert loops["op_calls"] >= N * C_OUT * H_OUT * W_OUT  # one or more per output element
    assert loops["profile"]["active"] == 1  # naive loops: one recorded call


def test_bench_profile_fills_columns_and_draws_the_figures(jobs: dict[str, Done]) -> None:
    proc, run_dir = jobs["bench"].proc, jobs["bench"].run_dir
    assert proc.returncode == 0, describe(proc)
    results, _ = load_run(run_dir)
    assert set(results["status"]) == {"ok"}
    calls = dict(zip(results["impl"], results["op_calls"], strict=True))
    assert calls["loops"] > 50 * calls["builtin"]
    assert (results["peak_mem_bytes"] > 0).all()
    ops = load_ops(run_dir)
    assert set(ops["impl"]) == {"builtin", "loops", "im2col"}
    for kind in ("ops", "op_calls", "memory"):
        (path,) = (run_dir / "plots").glob(f"conv_{kind}.*")
        assert path.read_bytes().startswith(PNG if path.suffix == ".png" else b"<?xml")
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Where the time goes" in html and "conv: where the time goes" in html
    # the timing pass is untouched by profiling: one timed row per case, samples present
    assert (results["n_samples"] > 0).all()


ONLINE = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


def _page_is_offline(page: str) -> None:
    assert (page.startswith("<!DOCTYPE html>") and "aten::im2col" in page) or "aten::" in page
    assert not ONLINE.search(page), ONLINE.search(page)
    assert "<link" not in page and "@import" not in page
    assert "<script src" not in page


def test_profile_writes_an_offline_page_and_no_kineto_lines(as_a_user: Done) -> None:
    proc, run_dir = as_a_user.proc, as_a_user.run_dir
    assert proc.returncode == 0, describe(proc)
    assert "USDT" not in proc.stderr and "profiler_start" not in proc.stderr, proc.stderr
    page = (run_dir / "profile.html").read_text(encoding="utf-8")
    _page_is_offline(page)
    assert "<h2>Operators</h2>" in page and ">aten::im2col<" in page  # the operator table
    assert "<h2>Timeline of one call</h2>" in page
    assert page.count('src="data:image/') >= 3  # breakdown, memory, timeline, embedded
    assert "need internet access" in page
    lines = proc.stdout.splitlines()
    outputs = [line.split(":")[0] for line in lines
               if line.split(":")[0] in ("page", "ops.csv", "figures", "TensorBoard", "Perfetto")]
    assert outputs[0] == "page" and f"page: {run_dir / 'profile.html'}" in proc.stdout
    assert "needs torch-tb-profiler, and internet access" in proc.stdout
    meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    assert len(meta["step_ms"]) == 3 and all(t > 0 for t in meta["step_ms"])
    per_call = next(line for line in lines if line.startswith("per call: median"))
    assert re.fullmatch(r"per call: median [\d.]+ (us|ms|s) over 3 active steps "
                        r"\([\d.]+-[\d.]+ (us|ms|s)(; steps differ by [\d.]+x: look at the "
                        r"timeline)?\)", per_call), per_call
    assert "e+0" not in proc.stdout and "e-0" not in proc.stdout  # no scientific notation


def test_bench_profile_gets_a_page_per_case(jobs: dict[str, Done]) -> None:
    run_dir = jobs["bench"].run_dir
    pages = write_run_pages(run_dir)
    results, _ = load_run(run_dir)
    keys = {tuple(r) for r in results[["layer", "impl", "compile", "device", "dtype", "mode",
                                       "case"]].itertuples(index=False)}
    assert set(pages) == keys
    for key, path in pages.items():
        assert path == run_dir / PROFILE_DIR / trace_name(key) / PAGE_FILE
        page = path.read_text(encoding="utf-8")
        _page_is_offline(page)
        assert "Timeline of one call" in page and "Memory over one call" in page
        for name in (STEPS_FILE, MEMORY_FILE, SPANS_FILE):
            assert (path.parent / name).exists()
    loops = json.loads((pages[next(k for k in pages if k[1] == "loops")].parent
                        / STEPS_FILE).read_text(encoding="utf-8"))
    assert len(loops["step_ms"]) == 1 and loops["op_calls"] >= N * C_OUT * H_OUT * W_OUT


def test_an_older_run_without_the_page_files_still_gets_pages(jobs: dict[str, Done],
                                                              tmp_path: Path) -> None:
    """A run profiled before memory.csv, steps.json and timeline.csv existed: times and the
    timeline come from trace.json, and the page says why it has no memory figure."""
    run_dir = shutil.copytree(jobs["bench"].run_dir, tmp_path / "run")
    for name in (STEPS_FILE, MEMORY_FILE, SPANS_FILE):
        for path in (run_dir / PROFILE_DIR).glob(f"*/{name}"):
            path.unlink()
    pages = write_run_pages(run_dir)
    assert len(pages) == 3
    for path in pages.values():
        page = path.read_text(encoding="utf-8")
        assert "No memory timeline" in page and "Memory over one call" not in page
        assert "Timeline of one call" in page and "per call: " in page


@pytest.mark.parametrize("name", ["unknown-impl", "over-budget", "bad-schedule", "bad-size"])
def test_profile_bad_input_exits_2_with_one_line(jobs: dict[str, Done], name: str) -> None:
    line = one_line_error(jobs[name].proc)
    if name == "over-budget":
        assert "--budget" in line and "smaller --size" in line


def test_a_loop_whose_events_would_not_fit_in_memory_is_not_profiled(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The profiler keeps every operator event: a five-loop conv at the notes' size (millions
    of them) is refused at a size given, and profiled at its calibration size otherwise."""
    monkeypatch.setattr(profile_run, "MAX_PROFILED_EVENTS", 50)  # TINY's loops record more
    line = one_line_error(invoke("profile", "conv", "--impl", "loops", "--size", TINY,
                                 "--out", tmp_path))
    assert "operator events" in line and "smaller --size" in line
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(profile_run, "MAX_PROFILED_EVENTS", 10**9)
    assert invoke("profile", "conv", "--impl", "loops", "--size", TINY, "--out",
                  tmp_path).returncode == 0


def test_memory_use_sees_an_allocation_and_its_release() -> None:
    from torch.profiler import profile, schedule

    nbytes = 3 * 2**20

    def step() -> float:
        block = torch.ones(nbytes, dtype=torch.uint8)
        return float(block[0])

    with profile(schedule=schedule(wait=0, warmup=1, active=2, repeat=1),
                 profile_memory=True) as prof:
        for _ in range(ProfileSettings(wait=0, warmup=1, active=2).calls):
            step()
            prof.step()
    peak, timeline = memory_use(list(prof.profiler.kineto_results.events()),
                                torch.autograd.DeviceType.CPU)
    assert nbytes <= peak < nbytes + 2**16
    held = [b for _, b in timeline]
    assert max(held) == pytest.approx(peak, rel=0.05) and held[-1] == 0  # freed by the end


def test_op_shares_split_each_case_into_top_operators_and_other() -> None:
    key = {"layer": "conv", "compile": "none", "device": "cpu", "dtype": "float32",
           "mode": "fwd", "case": "c"}
    ops = pd.DataFrame([
        {**key, "impl": "a", "op": "x", "self_cpu_us": 60.0, "self_device_us": 0.0},
        {**key, "impl": "a", "op": "y", "self_cpu_us": 30.0, "self_device_us": 0.0},
        {**key, "impl": "a", "op": "z", "self_cpu_us": 10.0, "self_device_us": 0.0},
        {**key, "impl": "b", "op": "x", "self_cpu_us": 5.0, "self_device_us": 0.0},
        {**key, "impl": "b", "op": "w", "self_cpu_us": 5.0, "self_device_us": 0.0},
    ])
    # top operators: the largest share in any case (x 60%, w 50%; not y 30%, z 10%)
    shares = op_shares(ops, top=2)
    a = shares[shares["impl"] == "a"].set_index("op")["share"]
    assert a.to_dict() == pytest.approx({"x": 0.6, OTHER_OPS: 0.4})
    b = shares[shares["impl"] == "b"].set_index("op")["share"]
    assert b.to_dict() == pytest.approx({"x": 0.5, "w": 0.5})
    results = pd.DataFrame([{**key, "impl": i, "op_calls": c, "peak_mem_bytes": 2**20,
                             "median_ms": 0.1} for i, c in (("a", 3), ("b", 1))])
    table = profile_table(results, ops).set_index("impl")
    assert table.loc["a", "top_op"] == "x" and table.loc["a", "top_share"] == pytest.approx(0.6)
    assert table.loc["a", "profiled_ms"] == pytest.approx(0.1)
    assert table.loc["b", "top_share"] == pytest.approx(0.5)
    assert table.loc["b", "peak_mem_mib"] == 1.0


def test_a_gpu_case_counts_each_kernel_once(tmp_path: Path) -> None:
    """Summing the operators' self device time and the kernels' would give 850 us: the 400 us
    of the two launched kernels twice, and the unlaunched one once."""
    ops = gpu_ops()
    assert timed_ops(ops)["us"].sum() == pytest.approx(GPU_KERNEL_US)
    assert set(timed_ops(ops)["op"]) == {"ampere_fp16_gemm", "softmax_warp_forward",
                                         "triton_poi_fused_0"}
    shares = op_shares(ops).set_index("op")["share"]
    assert shares.to_dict() == pytest.approx({"ampere_fp16_gemm": 300 / 450,
                                              "softmax_warp_forward": 100 / 450,
                                              "triton_poi_fused_0": 50 / 450})
    results = pd.DataFrame([{k: ops[k].iloc[0] for k in ("layer", "impl", "compile", "device",
                                                           "dtype", "mode", "case")}
                            | {"op_calls": 3.0, "peak_mem_bytes": 0.0, "median_ms": 0.4}])
    table = profile_table(results, ops)
    assert table["profiled_ms"].tolist() == pytest.approx([0.45])
    assert table["top_op"].tolist() == ["ampere_fp16_gemm"]
    # an ops.csv of an older run, without device_type: loads, and kernels are told by their
    # lack of CPU time
    ops.drop(columns="device_type").to_csv(tmp_path / "ops.csv", index=False)
    old = load_ops(tmp_path)
    assert old["device_type"].isna().all()
    assert list(event_kinds(old)) == list(ops["device_type"])
    assert profile_table(results, old)["profiled_ms"].tolist() == pytest.approx([0.45])
    ops.to_csv(tmp_path / "ops.csv", index=False)
    assert list(load_ops(tmp_path)["device_type"]) == list(ops["device_type"])


def test_gpu_kernel_time_without_kernel_rows_and_cpu_time_elsewhere() -> None:
    """The legacy profiler keeps kernel time on the operators (no kernel rows): theirs counts.
    A CPU case in the same frame counts CPU time, whatever the GPU case does."""
    legacy = gpu_ops(impl="legacy")
    legacy = legacy[legacy["device_type"] == "cpu"]
    cpu = gpu_ops(impl="cpu_case", device="cpu").assign(self_device_us=0.0, device_total_us=0.0)
    cpu = cpu[cpu["device_type"] == "cpu"]
    frame = timed_ops(pd.concat([gpu_ops(), legacy, cpu], ignore_index=True))
    totals = frame.groupby("impl")["us"].sum()
    assert totals.to_dict() == pytest.approx({"matmul": 450.0, "legacy": 400.0,
                                              "cpu_case": 80.0})
    assert self_time_column(cpu) == "self_cpu_us"
    assert self_time_column(gpu_ops()) == "self_device_us"


def test_an_ops_row_says_whether_it_is_an_operator_or_a_kernel(jobs: dict[str, Done]) -> None:
    kernel = SimpleNamespace(key="ampere_fp16_gemm", count=6, self_cpu_time_total=0.0,
                             cpu_time_total=0.0, self_device_time_total=600.0,
                             device_time_total=600.0, self_cpu_memory_usage=0,
                             device_type=torch.autograd.DeviceType.CUDA)
    row = op_row(kernel, {"case": "c"}, steps=3)
    assert row == {"case": "c", "op": "ampere_fp16_gemm", "calls": 2.0, "self_cpu_us": 0.0,
                   "cpu_total_us": 0.0, "self_device_us": 200.0, "device_total_us": 200.0,
                   "self_cpu_mem_bytes": 0.0, "device_type": "cuda"}
    assert set(row) <= set(OPS_COLUMNS) and listed(kernel)
    # a record_function range: its CPU event is listed, its copy on the GPU timeline (spanning
    # kernels listed already) is not; nor is the profiler's step
    cpu = torch.autograd.DeviceType.CPU
    assert listed(SimpleNamespace(key="attention", device_type=cpu, is_user_annotation=True))
    assert not listed(SimpleNamespace(key="attention", device_type=kernel.device_type,
                                      is_user_annotation=True))
    assert not listed(SimpleNamespace(key="ProfilerStep#2", device_type=cpu,
                                      is_user_annotation=False))
    _, rows = read_csv(jobs["im2col"].run_dir / "ops.csv")  # a real CPU profile
    assert rows and {r["device_type"] for r in rows} == {"cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.tensorboard
def test_tensorboard_profiler_plugin_lists_the_runs(jobs: dict[str, Done], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    pytest.importorskip("torch_tb_profiler", reason="torch-tb-profiler is not installed")
    logdir = jobs["bench"].run_dir / "profile"
    expected = {p.name for p in logdir.iterdir() if p.is_dir()}
    assert len(expected) == 3
    port = _free_port()
    log = (tmp_path / "tensorboard.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir",
                               str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler/runs"
    listed: dict = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.skip(f"TensorBoard could not start: "
                            f"{(tmp_path / 'tensorboard.log').read_text()[-500:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    listed = json.loads(response.read())
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                listed = {}
            if listed and not listed.get("loading") and set(listed["runs"]) >= expected:
                break
            time.sleep(0.5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert set(listed.get("runs", [])) == expected, listed


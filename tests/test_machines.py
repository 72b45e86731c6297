"""Runs whose cases ran on several machines (a Dask cluster, merged shards): what their report
and their comparison say about each machine, and that a run on one machine reads as before."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest

from reports import plots
from reports.compare import compare_runs
from reports.compare_report import write_comparison
from reports.figures import layer_data
from reports.report import build_report
from reports.schema import load_machines, load_run
from reports.style import palette
from reports.verdict import verdicts
from tests._runs import CALIBRATION, MACHINE, FakeCase, fake_run, noisy

ALPHA = {**MACHINE, "key": "m1", "host": "alpha", "cpu_model": "Alpha CPU", "cpu_count": 8,
         "calibration": {"cpu": {"matmul_gflops": {"float32": 400.0}, "copy_gbps": 40.0}}}
BETA = {**MACHINE, "key": "m2", "host": "beta", "cpu_model": "Beta CPU", "cpu_count": 4,
        "cuda_driver": "550.54", "calibration": {"cpu": {"matmul_gflops": {"float32": 100.0},
                                                         "copy_gbps": 10.0}},
        "gpus": [{"index": 0, "name": "NVIDIA H100", "capability": "9.0",
                  "memory_bytes": 80 * 2**30}]}
#: a cluster's driver: it wrote meta.json, ran no case and measured no ceiling
DRIVER = {**MACHINE, "key": "driver", "host": "driver", "cpu_model": "Driver CPU"}
#: each machine's sizes, and how much slower than m1 it runs everything
SIZES = {"m1": (1, 4, 16), "m2": (2, 8, 32)}
SLOWER = {"m1": 1.0, "m2": 3.0}


def _cases(seed: int = 0, slower: dict[str, float] = SLOWER) -> list[FakeCase]:
    """conv on two machines, a size group each: im2col twice the builtin's time on both."""
    cases = []
    for machine, sizes in SIZES.items():
        for n in sizes:
            flops = 10**6 * n
            for impl, factor in (("builtin", 1.0), ("im2col", 2.0)):
                median = 1e-10 * flops * factor * slower[machine]
                cases.append(FakeCase(impl, case=f"N{n}", flops=flops, bytes=10**4 * n,
                                      params={"N": n}, machine=machine,
                                      seconds=noisy(median, 20, 0.01, seed + n)))
    return cases


def _cluster_run(path: Path, seed: int = 0, beta: dict | None = None,
                 driver: dict = DRIVER) -> Path:
    """A Dask run: rows of m1 and m2, meta.json of the driver with no ceilings."""
    return fake_run(path, _cases(seed), machines={"m1": ALPHA, "m2": beta or BETA},
                    machine=driver, calibration={})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = _cluster_run(tmp_path_factory.mktemp("cluster") / "dask-run")
    build_report(run)
    return run


def _header(html: str, table_id: str) -> list[str]:
    table = html[html.index(f'<table id="{table_id}"'):]
    head = table[:table.index("</thead>")]
    return re.findall(r"<th[^>]*>([^<]*)</th>", head)


def test_report_describes_each_machine_and_names_the_machine_of_every_case(
        cluster: Path) -> None:
    html = (cluster / "report.html").read_text(encoding="utf-8")
    md = (cluster / "report.md").read_text(encoding="utf-8")
    section = html[html.index('<h2 id="machines">Machines</h2>'):html.index('<h2 id="run">')]
    for text in ("alpha", "Alpha CPU", "beta", "Beta CPU", "NVIDIA H100 (sm 9.0, 80 GiB)",
                 "550.54", "float32 400 GFLOP/s", "float32 100 GFLOP/s"):
        assert text in section, text
    assert "Driver CPU" not in section  # the driver ran no case
    assert "12 cases on cpu (2 machines)" in html
    assert "2 machine(s): m1, m2 (see Machines)" in html
    assert "machine" in _header(html, "cases")
    cells = re.findall(r'<td class="text">(m[12])</td>', html)
    assert cells.count("m1") >= 6 and cells.count("m2") >= 6
    assert "## Machines" in md and "| m2 | beta | Beta CPU | 4 |" in md
    # the implementations of each machine: its own sizes, its own times
    assert "| implementation | setting | machine | cases |" in md
    im2col = [line for line in md.splitlines() if line.startswith("| im2col | cpu float32 fwd")]
    assert [line.split(" | ")[2] for line in im2col] == ["m1", "m2"]


def test_verdict_compares_speeds_against_each_machines_own_builtin(cluster: Path) -> None:
    frame, _ = load_run(cluster)
    row = verdicts(frame).iloc[0]
    assert row["machines"] == 2
    # im2col takes twice its builtin's time on both machines, though m2 is 3x slower: x0.5
    assert row["hand"].startswith("im2col x0.5") and row["wins"] == "builtin 6 (of 6 sizes)"
    for name in ("report.html", "report.md"):
        text = unescape((cluster / name).read_text(encoding="utf-8"))
        assert "ran on 2 machines (m1, m2" in text and "each machine's own builtin" in text


def test_roofline_and_latency_have_a_panel_per_machine_under_its_own_ceilings(
        cluster: Path) -> None:
    frame, meta = load_run(cluster)
    assert meta["calibration"] == {}  # the driver measured nothing
    assert list((cluster / "plots").glob("conv_roofline.*"))
    layer = layer_data(frame, "conv", meta, palette(meta, frame["impl"]),
                       machines=load_machines(cluster, meta))
    roofline = plots.DRAWERS["roofline"](layer)
    assert roofline is not None and "A panel per machine" in roofline.caption
    peaks = {ax.get_title().split(" · ")[-1]: max(ax.get_lines()[0].get_ydata())
             for ax in roofline.fig.axes if ax.get_lines()}
    assert peaks == {"m1": 400.0, "m2": 100.0}
    latency = plots.DRAWERS["latency"](layer)
    assert latency is not None
    titles = [ax.get_title() for ax in latency.fig.axes]
    assert titles == ["cpu · float32 · fwd · m1", "cpu · float32 · fwd · m2"]


def test_one_worker_of_a_cluster_draws_the_roofline_from_machines_json(tmp_path: Path) -> None:
    cases = [c for c in _cases() if c.machine == "m1"]
    run = fake_run(tmp_path / "one-worker", cases, machines={"m1": ALPHA}, machine=DRIVER,
                   calibration={})
    frame, meta = load_run(run)
    layer = layer_data(frame, "conv", meta, palette(meta, frame["impl"]),
                       machines=load_machines(run, meta))
    roofline = plots.DRAWERS["roofline"](layer)
    assert roofline is not None and len(roofline.fig.axes) == 1
    assert max(roofline.fig.axes[0].get_lines()[0].get_ydata()) == 400.0
    assert "A panel per machine" not in roofline.caption


def test_a_run_on_one_machine_has_no_machines_section_nor_machine_column(
        tmp_path: Path) -> None:
    cases = [FakeCase(c.impl, case=c.case, flops=c.flops, bytes=c.bytes, params=c.params,
                      seconds=c.seconds) for c in _cases() if c.machine == "m1"]
    run = fake_run(tmp_path / "local", cases,
                   machines={"testhost": {**MACHINE, "calibration": CALIBRATION}})
    build_report(run)
    html = (run / "report.html").read_text(encoding="utf-8")
    md = (run / "report.md").read_text(encoding="utf-8")
    assert 'id="machines"' not in html and "## Machines" not in md
    assert "machine" not in _header(html, "cases")
    assert "own builtin" not in html and "cases ran on" not in html
    assert "| implementation | setting | cases |" in md
    assert "6 cases on cpu (Test CPU, torch 2.13.0+cpu)" in html


def test_compare_is_absolute_on_the_same_machines_and_relative_where_a_case_moved(
        tmp_path: Path) -> None:
    a = _cluster_run(tmp_path / "a")
    # another driver, the same workers: the cases ran where they ran before
    same = _cluster_run(tmp_path / "same", seed=100,
                        driver={**DRIVER, "host": "laptop", "cpu_model": "Laptop CPU"})
    c = compare_runs([a, same])
    assert c.basis == "absolute" and c.regressions == 0
    pairs = set(zip(c.frame["machine_a"], c.frame["machine_b"], strict=True))
    assert pairs == {("m1", "m1"), ("m2", "m2")}
    # m2 is now another machine, twice as slow: every time on it doubles, none relative to
    # that machine's own builtin
    gamma = {**BETA, "host": "gamma", "cpu_model": "Gamma CPU", "gpus": []}
    moved = fake_run(tmp_path / "moved", _cases(200, {"m1": 1.0, "m2": 6.0}),
                     machines={"m1": ALPHA, "m2": gamma}, machine=DRIVER, calibration={})
    c = compare_runs([a, moved])
    assert c.basis == "relative" and c.regressions == 0
    assert set(c.frame["verdict"]) == {"same"}
    assert compare_runs([a, moved], basis="absolute").regressions == 2 * 3  # m2's sizes
    md, html = (p.read_text(encoding="utf-8")
                for p in write_comparison(c, tmp_path / "out")[1:3])
    for text in ("cases ran on: m1 (alpha, Alpha CPU, 8 cores) 6 rows",
                 "m2 (gamma, Gamma CPU, 4 cores) 6 rows", "NVIDIA H100"):
        assert text in md, text
    assert "machine A" in html and "Gamma CPU" in html

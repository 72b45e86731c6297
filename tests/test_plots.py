"""Figures of a run: which files exist for which data, that an impl keeps its colour, and that
they read at a glance (lines along x, slopes from three sizes, labelled points, bounded size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.ticker import NullFormatter

from reports import plots, profile_plots
from reports.analysis import growth_exponents
from reports.figures import DPI, MAX_HEIGHT_PX, layer_data, readable_ticks
from reports.schema import load_run
from reports.style import palette
from tests._runs import FakeCase, fake_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG_START = b"<?xml"
SIZES = {"N1": 1, "N4": 4, "N16": 16}
LOOP_REASON = "predicted 45.6 s (5.7 s per call) > budget 10 s; raise --budget to run it"


def _conv_cases() -> list[FakeCase]:
    """conv: 3 sizes, fwd + fwdbwd, float32 + bfloat16, compiled rows, a skipped and a wrong one."""
    cases = []
    for dtype in ("float32", "bfloat16"):
        for mode, work in (("fwd", 1), ("fwdbwd", 3)):
            for case, n in SIZES.items():
                flops = 1_000_000 * n * work
                grad = float("nan") if mode == "fwd" else 2e-6
                common = {"case": case, "dtype": dtype, "mode": mode, "flops": flops,
                          "bytes": 50_000 * n, "params": {"N": n}, "grad_rel_err": grad}
                for impl, scale in (("im2col", 2.0), ("builtin", 1.0)):
                    cases.append(FakeCase(impl, seconds=[1e-9 * scale * flops] * 5, **common))
                    cases.append(FakeCase(impl, compile="default", compile_s=1.5,
                                          seconds=[0.8e-9 * scale * flops] * 5, **common))
                if n == 1:
                    cases.append(FakeCase("loops", seconds=[1e-6 * flops] * 3, **common))
                else:
                    cases.append(FakeCase("loops", status="skipped", reason=LOOP_REASON,
                                          predicted_s=45.6, predicted_call_s=5.7,
                                          rel_err=float("nan"), **common))
    bad = next(c for c in cases if (c.impl, c.dtype, c.mode, c.case, c.compile)
               == ("im2col", "bfloat16", "fwdbwd", "N16", "none"))
    bad.status, bad.rel_err, bad.reason = "incorrect", 0.05, "output: 3 elements outside"
    return cases


def _other_cases() -> list[FakeCase]:
    """pool: fwd float32 only, exact (zero) errors; dead: nothing measured."""
    pool = [FakeCase(impl, case=case, layer="pool", flops=1000 * n, params={"N": n},
                     seconds=[1e-6 * n * (3 if impl == "unfold" else 1)] * 5, rel_err=0.0)
            for case, n in SIZES.items() for impl in ("unfold", "builtin")]
    dead = [FakeCase("loops", layer="dead", status="skipped", reason="too slow",
                     rel_err=float("nan")),
            FakeCase("builtin", layer="dead", status="error", reason="RuntimeError: boom",
                     rel_err=float("nan"))]
    return pool + dead


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[plots.Figure]:
    run = fake_run(tmp_path_factory.mktemp("run") / "r1", _conv_cases() + _other_cases())
    frame, meta = load_run(run)
    return plots.render(frame, meta, run / "plots")


def _kinds(figures: list[plots.Figure], layer: str) -> list[str]:
    return [f.kind for f in figures if f.layer == layer]


def test_every_figure_with_data_is_a_file_in_reading_order(rendered: list[plots.Figure]) -> None:
    assert _kinds(rendered, "conv") == list(plots.KINDS)
    for figure in rendered:
        assert figure.path.stem == f"{figure.layer}_{figure.kind}"
        data = figure.path.read_bytes()
        magic = {".svg": SVG_START, ".png": PNG_MAGIC}[figure.path.suffix]
        assert data.startswith(magic) and len(data) > 5000
        assert figure.layer in figure.title and figure.caption
    # a few sizes per variant: SVG, crisp at any zoom and no larger than the PNG
    assert {f.path.suffix for f in rendered} == {".svg"}


def test_figures_absent_where_data_is(rendered: list[plots.Figure]) -> None:
    # pool: one mode, no compile rows, all ok; dead: only a status panel
    assert _kinds(rendered, "pool") == ["latency", "speedup", "roofline", "correctness"]
    assert _kinds(rendered, "dead") == ["correctness"]
    assert "last panel counts" in next(f for f in rendered if f.layer == "dead").caption


def test_no_roofline_without_calibration(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "r", _other_cases(), calibration=None)
    frame, meta = load_run(run)
    layer = layer_data(frame, "pool", meta, palette(meta, frame["impl"]))
    assert plots.DRAWERS["roofline"](layer) is None
    assert plots.DRAWERS["latency"](layer) is not None


def _colors(fig: object) -> dict[str, set[str]]:
    """Legend label -> colours of the lines and markers drawn under it."""
    seen: dict[str, set[str]] = {}
    for ax in fig.axes:  # type: ignore[attr-defined]
        for line in ax.get_lines():
            seen.setdefault(line.get_label(), set()).add(to_hex(line.get_color()))
        for points in ax.collections:
            colors = points.get_facecolors() if len(points.get_facecolors()) else []
            colors = colors if len(colors) else points.get_edgecolors()
            seen.setdefault(points.get_label(), set()).update(to_hex(c) for c in colors)
    return seen


def _layer(frame, meta):  # type: ignore[no-untyped-def]
    return layer_data(frame, "conv", meta, palette(meta, frame["impl"]))


def test_an_impl_has_one_colour_in_every_figure() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        frame, meta = load_run(fake_run(Path(tmp) / "r", _conv_cases()))
    layer = _layer(frame, meta)
    for kind in ("latency", "speedup", "roofline", "compile", "backward"):
        drawn = plots.DRAWERS[kind](layer)
        assert drawn is not None, kind
        colors = _colors(drawn.fig)
        for impl in ("im2col", "builtin", "loops"):
            labelled = [c for label, c in colors.items() if label.split(" ")[0].split("+")[0]
                        == impl]
            if (kind, impl) in (("speedup", "builtin"), ("compile", "loops")):
                continue  # the reference line is builtin's; loops are never compiled
            assert labelled, (kind, impl)
            assert set().union(*labelled) == {layer.palette.color(impl)}, (kind, impl)


def test_latency_shows_slopes_and_predicted_loops(tmp_path: Path) -> None:
    frame, meta = load_run(fake_run(tmp_path / "r", _conv_cases()))
    drawn = plots.DRAWERS["latency"](_layer(frame, meta))
    assert drawn is not None and "Hollow markers" in drawn.caption
    ax = drawn.fig.axes[0]  # cpu float32 fwd
    labels = ax.get_legend_handles_labels()[1]
    assert "im2col (slope 1.00)" in labels and "builtin+default (slope 1.00)" in labels
    assert "loops (slope n/a)" in labels  # one measured size: no slope to fit
    predicted = next(c for c in ax.collections if c.get_label() == "loops predicted (skipped)")
    assert sorted(predicted.get_offsets()[:, 1]) == pytest.approx([5700.0, 5700.0])
    assert list(predicted.get_facecolors()) == []  # hollow


def test_roofline_ceiling_uses_tf32_peak_when_on() -> None:
    table = {"float32": 20_000.0, "tf32": 150_000.0}
    on = {"machine": {"tf32": {"cuda_matmul_allow_tf32": True}}}
    off = {"machine": {"tf32": {"cuda_matmul_allow_tf32": False}}}
    assert plots._peak_key("cuda", "float32", table, on) == "tf32"
    assert plots._peak_key("cuda", "float32", table, off) == "float32"
    assert plots._peak_key("cpu", "float32", table, on) == "float32"
    assert plots._peak_key("cuda", "bfloat16", table, on) == "bfloat16"


def test_many_impls_single_sizes_and_nan_do_not_crash(tmp_path: Path) -> None:
    cases = [FakeCase(f"user_impl_{i}", seconds=[1e-4 * (i + 1)] * 3) for i in range(22)]
    cases += [FakeCase("builtin", seconds=[1e-4] * 3),
              FakeCase("nan_impl", seconds=[], status="error", reason="crash",
                       rel_err=float("nan")),
              FakeCase("zero_err", seconds=[2e-4] * 3, rel_err=0.0)]
    frame, meta = load_run(fake_run(tmp_path / "r", cases))
    figures = plots.render(frame, meta, tmp_path / "plots")
    assert [f.kind for f in figures] == ["latency", "speedup", "roofline", "correctness"]
    assert all(f.path.exists() for f in figures)


def test_latency_lines_run_along_x_with_a_marker_per_size(tmp_path: Path) -> None:
    # sizes of almost equal FLOPs, out of FLOP order, with times that differ: no zig-zag
    cases = [FakeCase(impl, case=case, flops=flops, params={"N": i},
                      seconds=[ms * scale * 1e-3] * 3)
             for i, (case, flops, ms) in enumerate((("a", 5_100, 3.0), ("b", 1_000, 1.0),
                                                    ("c", 5_000, 0.5), ("d", 1_050, 2.0),
                                                    ("e", 50_000, 9.0)))
             for impl, scale in (("im2col", 1.0), ("builtin", 0.5))]
    frame, meta = load_run(fake_run(tmp_path / "r", cases))
    layer = _layer(frame, meta)
    ax = plots.DRAWERS["latency"](layer).fig.axes[0]
    for line in ax.get_lines():
        assert (np.diff(line.get_xdata()) > 0).all(), line.get_label()
    im2col = [line for line in ax.get_lines()
              if to_hex(line.get_color()) == layer.palette.color("im2col")]
    joined = next(line for line in im2col if line.get_label().startswith("im2col"))
    markers = next(line for line in im2col if line.get_linestyle() == "None")
    assert len(joined.get_xdata()) == 3  # 1000 with 1050, 5000 with 5100, 50000
    assert sorted(markers.get_xdata()) == [1_000, 1_050, 5_000, 5_100, 50_000]


def test_a_slope_needs_three_sizes(tmp_path: Path) -> None:
    cases = [FakeCase(impl, case=f"N{n}", flops=10**6 * n, params={"N": n},
                      seconds=[1e-9 * 10**6 * n] * 3)
             for impl, sizes in (("im2col", (1, 4, 16)), ("einsum", (1, 4))) for n in sizes]
    frame, meta = load_run(fake_run(tmp_path / "r", cases))
    exponents = growth_exponents(frame)
    assert list(exponents["impl"]) == ["im2col"]
    assert exponents["exponent"].iloc[0] == pytest.approx(1.0)
    drawn = plots.DRAWERS["latency"](_layer(frame, meta))
    labels = drawn.fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["im2col (slope 1.00)", "einsum (slope n/a)"]


def test_roofline_names_each_variants_best_point_with_plain_ticks() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        frame, meta = load_run(fake_run(Path(tmp) / "r", _conv_cases()))
    drawn = plots.DRAWERS["roofline"](_layer(frame, meta))
    ax = drawn.fig.axes[0]  # cpu float32 fwd
    assert {"loops", "im2col", "im2col+default", "builtin", "builtin+default"} <= {
        t.get_text() for t in ax.texts}
    readable_ticks(drawn.fig)
    for axis in (ax.xaxis, ax.yaxis):
        labels = axis.get_major_formatter().format_ticks(list(axis.get_majorticklocs()))
        assert len(labels) >= 3 and all("times" not in t for t in labels), labels
        assert isinstance(axis.get_minor_formatter(), NullFormatter)


def _many_facets() -> list[FakeCase]:
    """conv in eight facets (four dtypes, two modes), eager and compiled, three sizes."""
    return [FakeCase(impl, case=case, dtype=dtype, mode=mode, compile=compile_mode,
                     compile_s=2.0, flops=10**6 * n, bytes=10**4 * n, params={"N": n},
                     seconds=[1e-9 * 10**6 * n * scale * (3 if mode == "fwdbwd" else 1)] * 3)
            for dtype in ("float32", "float64", "bfloat16", "float16")
            for mode in ("fwd", "fwdbwd") for case, n in SIZES.items()
            for impl, scale in (("im2col", 2.0), ("einsum", 3.0), ("builtin", 1.0))
            for compile_mode in ("none", "default")]


def test_many_facets_fit_in_columns_with_legends_beside_the_data(tmp_path: Path) -> None:
    frame, meta = load_run(fake_run(tmp_path / "r", _many_facets()))
    layer = _layer(frame, meta)
    for kind, draw in plots.DRAWERS.items():
        drawn = draw(layer)
        assert drawn is not None, kind
        fig = drawn.fig
        assert round(fig.get_size_inches()[1] * DPI) <= MAX_HEIGHT_PX, kind
        fig.draw_without_rendering()
        panels = [ax.get_window_extent() for ax in fig.axes]
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        assert legends, kind
        for shown in legends:
            box = shown.get_window_extent()
            assert not any(box.overlaps(panel) for panel in panels), kind


def _attention_ops(impls: list[str], cases: list[str]) -> pd.DataFrame:
    rows = [{"layer": "attention", "impl": impl, "compile": "none", "device": "cpu",
             "dtype": "float32", "mode": "fwd", "case": case, "op": op, "calls": 1.0,
             "self_cpu_us": us * (i + 1), "self_device_us": 0.0}
            for case in cases for i, impl in enumerate(impls)
            for op, us in (("aten::bmm", 40.0), ("aten::softmax", 10.0), ("aten::mul", 1.0))]
    return pd.DataFrame(rows)


def test_breakdown_of_ten_variants_is_laid_out_in_columns_and_counts_ops(tmp_path: Path) -> None:
    impls = ["builtin", *(f"impl{i}" for i in range(9))]
    cases = [f"N{n}" for n in (1, 2, 4, 8)]
    run = fake_run(tmp_path / "r", [FakeCase(impl, layer="attention", case=case,
                                             params={"N": int(case[1:])}, seconds=[1e-4] * 3)
                                    for case in cases for impl in impls])
    frame, meta = load_run(run)
    frame = frame.assign(op_calls=np.where(frame["impl"] == "builtin", 1.0, 1234.0))
    layer = layer_data(frame, "attention", meta, palette(meta, frame["impl"]),
                       ops=_attention_ops(impls, cases))
    drawn = plots.PROFILE_DRAWERS["ops"](layer)
    assert drawn is not None
    assert round(drawn.fig.get_size_inches()[1] * DPI) <= MAX_HEIGHT_PX
    assert len({ax.get_position().x0 for ax in drawn.fig.axes}) == 2  # two columns
    labels = [t.get_text() for t in drawn.fig.axes[0].get_yticklabels()]
    assert labels[0].endswith("· 1 op") and labels[1].endswith("· 1.23k ops")
    shares = {t.get_text() for t in drawn.fig.axes[0].texts}
    assert {"78%", "20%"} <= shares  # 40, 10 and 1 us: the 2% segment is left unlabelled


def test_case_breakdown_in_ms_with_shares_on_a_log_axis_when_it_spans_decades() -> None:
    from matplotlib.figure import Figure as MplFigure

    ops = pd.DataFrame({"op": ["aten::select", "aten::mul", "aten::add_"],
                        "calls": [394.0, 1.0, 2.0], "device": "cpu",
                        "self_cpu_us": [700_000.0, 50.0, 3.0], "self_device_us": 0.0})
    ax = MplFigure().subplots()
    profile_plots._op_times(ax, ops)
    assert ax.get_xscale() == "log"
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == "700 ms · 100%" and texts[1] == "0.05 ms · 0.0071%"
    assert [t.get_text() for t in ax.get_yticklabels()][1] == "aten::mul  (1 call)"
    ax = MplFigure().subplots()
    profile_plots._op_times(ax, ops.assign(self_cpu_us=[300.0, 200.0, 100.0]))
    assert ax.get_xscale() == "linear"


def test_figures_are_the_same_bytes_every_time(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "r", _other_cases())
    frame, meta = load_run(run)
    first = {f.path.name: f.path.read_bytes() for f in plots.render(frame, meta, tmp_path / "a")}
    again = {f.path.name: f.path.read_bytes() for f in plots.render(frame, meta, tmp_path / "b")}
    assert first == again and any(name.endswith(".svg") for name in first)


def test_backward_cost_spanning_decades_gets_a_log_axis_with_labelled_ticks(
        tmp_path: Path) -> None:
    cases = [FakeCase(impl, case=case, mode=mode, flops=10**6 * n, params={"N": n},
                      seconds=[1e-3 * n * (ratio if mode == "fwdbwd" else 1.0)] * 3)
             for case, n in SIZES.items() for mode in ("fwd", "fwdbwd")
             for impl, ratio in (("im2col", 3.0), ("loops", 300.0), ("builtin", 2.0))]
    frame, meta = load_run(fake_run(tmp_path / "r", cases))
    drawn = plots.DRAWERS["backward"](_layer(frame, meta))
    ax = drawn.fig.axes[0]
    readable_ticks(drawn.fig)
    labels = ax.yaxis.get_major_formatter().format_ticks(list(ax.yaxis.get_majorticklocs()))
    assert ax.get_yscale() == "log" and len(labels) >= 3 and "100" in labels

"""Figures of a run: which PNGs exist for which data, and that an impl keeps its colour."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.colors import to_hex

from reports import plots
from reports.figures import layer_data
from reports.schema import load_run
from reports.style import palette
from tests._runs import FakeCase, fake_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
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


def test_every_figure_with_data_is_a_png_in_reading_order(rendered: list[plots.Figure]) -> None:
    assert _kinds(rendered, "conv") == list(plots.KINDS)
    for figure in rendered:
        assert figure.path.name == f"{figure.layer}_{figure.kind}.png"
        data = figure.path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        assert figure.layer in figure.title and figure.caption


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
    assert "loops" in labels  # one measured size: no slope to fit
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
    assert all(f.path.read_bytes().startswith(PNG_MAGIC) for f in figures)

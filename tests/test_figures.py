"""What every figure relies on: implementation colours, tick labels, line and label layout, the
file format and its bytes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure as MplFigure

from impls import REGISTRY
from reports.figures import SVG_MAX_POINTS, binned, log_ticks, save, spread, tick_text
from reports.style import BASELINE_COLOR, IMPL_COLORS, format_count, palette

REGISTERED = REGISTRY.impl_order()


def _lab(color: str) -> np.ndarray:
    """CIELAB (D65) of a ``#rrggbb`` colour."""
    rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / [0.95047, 1.0, 1.08883]
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _closest(colors: list[str]) -> float:
    """The smallest colour difference (CIE76 delta E) between two of ``colors``."""
    return min(float(np.linalg.norm(_lab(a) - _lab(b)))
               for a, b in itertools.combinations(colors, 2))


@pytest.mark.parametrize("layer", [layer.name for layer in REGISTRY.layers()])
def test_the_implementations_of_a_layer_get_colours_far_apart(layer: str) -> None:
    names = [impl.name for impl in REGISTRY.impls(layer)]
    colors = palette({"impl_order": REGISTERED})
    assert all(name in IMPL_COLORS for name in names)  # a new built-in: give it a colour
    # 20 is about where two colours stop being told apart at a glance
    assert _closest([colors.color(n) for n in names]) > 20
    mine = palette({"impl_order": [*REGISTERED, "mine"]}).color("mine")
    assert _closest([mine, *(colors.color(n) for n in names)]) > 20


def test_an_implementation_keeps_its_colour_whatever_the_run_holds() -> None:
    everything = palette({"impl_order": REGISTERED})
    # a user's implementation of conv lands between the layers' built-ins in impl_order
    at = REGISTERED.index("im2col_chunked") + 1
    with_user = palette({"impl_order": [*REGISTERED[:at], "mine", *REGISTERED[at:]]})
    filtered = palette({}, ["builtin", "fused"])  # an old run: no impl_order, two impls
    for name in REGISTERED:
        assert with_user.color(name) == everything.color(name), name
    assert filtered.color("fused") == everything.color("fused")
    assert filtered.color("builtin") == BASELINE_COLOR
    # a user's implementation keeps its colour from run to run, and is nobody else's
    again = palette({"impl_order": ["loops", "builtin"]}, ["mine"])
    assert again.color("mine") == with_user.color("mine")
    assert with_user.color("mine") not in IMPL_COLORS.values()


def test_user_implementations_get_distinct_colours_however_many() -> None:
    names = [f"user_{i}" for i in range(30)]
    colors = palette({"impl_order": REGISTERED}, names)
    assert len({colors.color(n) for n in [*REGISTERED, *names]}) == len(REGISTERED) + 30


def test_counts_read_as_words() -> None:
    assert [format_count(n, "op") for n in (1, 2, 12, 999, 1000, 10_398, 2.5e6)] == [
        "1 op", "2 ops", "12 ops", "999 ops", "1k ops", "10.4k ops", "2.5M ops"]
    assert format_count(float("nan"), "op") == ""


def test_log_ticks_are_plain_numbers_at_one_two_five_or_decades() -> None:
    assert log_ticks(1.6, 25.0) == pytest.approx([2.0, 5.0, 10.0, 20.0])
    assert log_ticks(3.0, 4.5) == pytest.approx([3.0, 3.5, 4.0, 4.5])  # under a decade
    assert log_ticks(1e4, 2e9) == pytest.approx([1e4, 1e5, 1e6, 1e7, 1e8, 1e9])
    assert len(log_ticks(1e-12, 1e6)) <= 10  # every few decades where it spans many
    assert [tick_text(v) for v in (2e6, 1e4, 0.05, 1.0, 200.0, 1e-7, 3e-7)] == [
        "2M", "10k", "0.05", "1", "200", "$10^{-7}$", r"$3\times10^{-7}$"]


def test_a_line_joins_sizes_of_almost_equal_x_in_one_point() -> None:
    x, y = binned(np.array([1000.0, 1050.0, 5000.0, 50_000.0]), np.array([1.0, 4.0, 3.0, 9.0]))
    assert x == pytest.approx([np.sqrt(1000 * 1050), 5000.0, 50_000.0])
    assert y == pytest.approx([2.0, 3.0, 9.0])
    assert binned(np.array([31_104.0]), np.array([1.0]))[0][0] == 31_104.0  # exact


def test_labels_are_spread_apart_in_order_and_inside_the_axes() -> None:
    assert spread([0.1, 0.5], 0.06) == pytest.approx([0.1, 0.5])
    assert spread([0.5, 0.5, 0.52], 0.06) == pytest.approx([0.5, 0.56, 0.62])
    assert spread([0.95, 0.96], 0.06, hi=0.9) == pytest.approx([0.84, 0.9])


def _figure(points: int) -> MplFigure:
    fig = MplFigure(figsize=(4, 3))
    xs = np.linspace(1.0, 2.0, points)
    fig.subplots().plot(xs, xs**2, "o")
    return fig


def test_few_points_make_a_reproducible_svg_many_a_png(tmp_path: Path) -> None:
    first = save(_figure(10), tmp_path / "few")
    data = first.read_bytes()
    assert first.name == "few.svg" and b"<svg" in data
    assert save(_figure(10), tmp_path / "few").read_bytes() == data
    (tmp_path / "v1.2_many.svg").write_text("an earlier report's")
    many = save(_figure(SVG_MAX_POINTS + 1), tmp_path / "v1.2_many")
    assert many.name == "v1.2_many.png" and not (tmp_path / "v1.2_many.svg").exists()

"""The runner turns every kind of failure into a row and keeps going."""

import pytest

from impls import REGISTRY, Unsupported, register_impl
from suites.cases import new_case
from suites.config import BenchConfig, TimingConfig
from suites.runner import run_case

TINY = {"N": 1, "C_in": 1, "C_out": 2, "H": 6, "W": 6, "k": 3, "stride": 1, "padding": 0}
CONFIG = BenchConfig(layers=("conv",), timing=TimingConfig(min_time_s=0.01, min_samples=2))


def conv2d_picky(x, weight, bias, stride, padding):  # type: ignore[no-untyped-def]
    raise Unsupported("picky: only runs on Tuesdays")


def conv2d_broken(x, weight, bias, stride, padding):  # type: ignore[no-untyped-def]
    raise ValueError("boom")


@pytest.mark.parametrize(("fn", "status", "reason"), [
    (conv2d_picky, "skipped", "picky: only runs on Tuesdays"),
    (conv2d_broken, "error", "ValueError: boom"),
])
def test_an_impl_that_raises_is_a_row_with_the_reason(fn, status: str, reason: str) -> None:
    with REGISTRY.scoped():
        register_impl("conv", "test", devices=("cpu",))(fn)
        result = run_case(new_case("conv", "test", "none", TINY, "cpu", "float32", "fwd"),
                          CONFIG)
    assert (result.status, result.reason) == (status, reason)
    assert result.samples is None
    with pytest.raises(KeyError):
        REGISTRY.impl("conv", "test")  # the scope ended: gone again

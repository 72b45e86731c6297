"""The runner turns every kind of failure into a row and keeps going."""

from impls import REGISTRY, Unsupported
from impls.registry import Impl
from suites.cases import Case
from suites.config import BenchConfig, TimingConfig
from suites.runner import run_case

TINY = (("N", 1), ("C_in", 1), ("C_out", 2), ("H", 6), ("W", 6), ("k", 3), ("stride", 1),
        ("padding", 0))
CONFIG = BenchConfig(layers=("conv",), timing=TimingConfig(min_time_s=0.01, min_samples=2))


def _with_impl(name: str, fn) -> None:  # type: ignore[no-untyped-def]
    REGISTRY._impls["conv"][name] = Impl("conv", name, fn, frozenset({"cpu"}),
                                         frozenset(REGISTRY.impl("conv", "builtin").dtypes),
                                         frozenset({"fwd", "fwdbwd"}), False, True, "<test>")


def test_an_impl_that_raises_unsupported_is_skipped_with_its_reason() -> None:
    def conv2d_picky(x, weight, bias, stride, padding):  # type: ignore[no-untyped-def]
        raise Unsupported("picky: only runs on Tuesdays")

    _with_impl("picky", conv2d_picky)
    try:
        result = run_case(Case("conv", "picky", "none", TINY, "cpu", "float32", "fwd"), CONFIG)
    finally:
        del REGISTRY._impls["conv"]["picky"]
    assert (result.status, result.reason) == ("skipped", "picky: only runs on Tuesdays")
    assert result.samples is None


def test_an_impl_that_raises_is_an_error_row_with_the_exception() -> None:
    def conv2d_broken(x, weight, bias, stride, padding):  # type: ignore[no-untyped-def]
        raise ValueError("boom")

    _with_impl("broken", conv2d_broken)
    try:
        result = run_case(Case("conv", "broken", "none", TINY, "cpu", "float32", "fwd"), CONFIG)
    finally:
        del REGISTRY._impls["conv"]["broken"]
    assert (result.status, result.reason) == ("error", "ValueError: boom")
    assert result.samples is None

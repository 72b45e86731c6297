"""The runner turns every kind of failure into a row and keeps going."""

import pytest

from impls import REGISTRY, Unsupported, register_impl
from suites.cases import new_case
from suites.config import BenchConfig, TimingConfig
from suites.runner import run, run_case

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


def _sleeps_now_and_then(period: int) -> object:
    """A correct conv that sleeps 20 ms in one call of every ``period``: a burst of its own."""
    import time

    import torch.nn.functional as F

    calls = [0]

    def conv2d_sleepy(x, weight, bias, stride, padding):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] % period == 0:
            time.sleep(0.02)
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)

    return conv2d_sleepy


def test_a_planted_implementation_that_stalls_now_and_then_is_flagged_unstable() -> None:
    # each sample is one call (block_s tiny) and every other call stalls 20 ms: the median's
    # interval spans the stalled and the quick calls however many samples are taken
    config = BenchConfig(layers=("conv",), trials=1, timing=TimingConfig(
        min_time_s=0.0, max_time_s=0.3, precision=0.02, warmup_s=0.0, block_s=1e-9,
        min_samples=9))
    with REGISTRY.scoped():
        register_impl("conv", "sleepy", devices=("cpu",))(_sleeps_now_and_then(2))
        cases = [new_case("conv", name, "none", TINY, "cpu", "float32", "fwd")
                 for name in ("builtin", "sleepy")]
        results = {r.case.impl: r for r in run(config, cases, [])}
    sleepy = results["sleepy"]
    assert sleepy.status == "ok" and sleepy.stable is False
    assert any(f.startswith("imprecise:") for f in sleepy.flags), sleepy.flags
    assert sleepy.row()["stable"] == 0 and "imprecise:" in sleepy.row()["flags"]
    # paired with the builtin sampled in the same rounds
    assert sleepy.samples is not None and results["builtin"].samples is not None
    assert set(sleepy.samples.rounds) <= set(results["builtin"].samples.rounds)
    assert sleepy.speedup_lo <= sleepy.speedup_vs_builtin <= sleepy.speedup_hi


def test_a_gpu_row_counts_the_one_launching_thread_not_the_cpu_pool() -> None:
    """``threads`` says what computed the case: the CPU's intra-op threads on the CPU, the one
    thread launching kernels on a GPU (the CPU pool's size does not leak into GPU rows)."""
    import torch

    from suites.runner import new_result

    config = BenchConfig(layers=("conv",))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rows = {name: new_result(new_case("conv", "builtin", "none", TINY, name, "float32",
                                          "fwd"), config).row()["threads"]
                for name in ("cpu", "cuda", "cuda:1")}
    finally:
        torch.set_num_threads(before)
    assert rows == {"cpu": 2, "cuda": 1, "cuda:1": 1}

"""What a failure means: out of memory however it is wrapped, a lost CUDA context, ``sys.exit``;
and what the executor does after each (no GPU needed: the exceptions are fabricated, the
executor gets fake cases that only name a device)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed
from torch._inductor.exc import InductorError

from suites import memory
from suites.config import BenchConfig
from suites.faults import chain, classify, context_lost
from suites.isolation import CaseLost, Guard, InProcess, Lost

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"
CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB"


def accelerator_error(message: str, code: int) -> torch.AcceleratorError:
    """What torch raises for a failed CUDA call (``c10_cuda_check_implementation``)."""
    error = torch.AcceleratorError(message)
    error.error_code = code  # type: ignore[attr-defined]
    return error


def chained(outer: BaseException, inner: BaseException, cause: bool) -> BaseException:
    """``outer`` raised while handling ``inner`` (``raise outer from inner`` with ``cause``)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            if cause:
                raise outer from exc
            raise outer  # noqa: B904 - the implicit __context__ is what is tested
    except BaseException as exc:
        return exc


class OutOfResources(Exception):
    """As triton.runtime.errors.OutOfResources words it."""

    def __init__(self) -> None:
        super().__init__("out of resource: shared memory, Required: 98304, Hardware limit: "
                         "65536. Reducing block sizes or `num_stages` may help.")


class Unreadable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def _host_oom() -> BaseException:
    try:
        torch.empty(2**50)  # 4 PiB: refused at once, nothing touched
    except RuntimeError as exc:
        return exc
    raise AssertionError("allocated 4 PiB")


@pytest.mark.parametrize(("exc", "found"), [
    (torch.OutOfMemoryError(CUDA_OOM), "OutOfMemoryError: CUDA out of memory"),
    (chained(RuntimeError("retry failed"), torch.OutOfMemoryError(CUDA_OOM), cause=True),
     "OutOfMemoryError: CUDA out of memory"),
    (chained(ValueError("fallback failed"), torch.OutOfMemoryError(CUDA_OOM), cause=False),
     "OutOfMemoryError: CUDA out of memory"),
    (BackendCompilerFailed(len, torch.OutOfMemoryError(CUDA_OOM), None),
     "OutOfMemoryError: CUDA out of memory"),
    (InductorError(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                                "`cublasCreate(handle)`"), None), "CUBLAS_STATUS_ALLOC_FAILED"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "CUDNN_STATUS_ALLOC_FAILED"),
    (RuntimeError("cuDNN Frontend error: CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED"),
     "HOST_ALLOCATION_FAILED"),
    (accelerator_error("CUDA error: out of memory", 2), "AcceleratorError: CUDA error: out of"),
    (RuntimeError("std::bad_alloc"), "std::bad_alloc"),
    (MemoryError(), "MemoryError"),
    (OSError(12, "Cannot allocate memory"), "Cannot allocate memory"),
    (_host_oom(), "can't allocate memory"),
], ids=["oom", "cause", "context", "dynamo-wrapper", "inductor-cublas", "cudnn", "cudnn9",
        "cuda-runtime", "bad_alloc", "MemoryError", "ENOMEM", "cpu-allocator"])
def test_out_of_memory_is_found_however_it_is_wrapped(exc: BaseException, found: str) -> None:
    status, reason = classify(exc)
    assert status == "oom" and found in reason, reason
    assert len(reason) <= 500 and "\n" not in reason
    if isinstance(exc, (BackendCompilerFailed, RuntimeError)) and exc.__cause__ is not None:
        assert reason.endswith("(inside RuntimeError)"), reason  # where it was found


@pytest.mark.parametrize("exc", [
    OutOfResources(),  # shared memory per block: the kernel's configuration, not memory
    RuntimeError("CUDA error: too many resources requested for launch"),
    accelerator_error("CUDA error: invalid configuration argument", 9),
    ValueError("boom"),
    Unreadable(),
])
def test_failures_that_are_not_memory_are_errors(exc: BaseException) -> None:
    status, reason = classify(exc)
    assert status == "error" and reason.startswith(f"{type(exc).__name__}: "), reason
    assert context_lost(exc) is None  # none of them poisons the CUDA context


@pytest.mark.parametrize("exc", [
    accelerator_error(ILLEGAL_ACCESS, 700),
    accelerator_error("CUDA error: unspecified launch failure", 719),
    RuntimeError("Triton Error [CUDA]: device-side assert triggered"),
    InductorError(accelerator_error("CUDA error: misaligned address", 716), None),
])
def test_a_sticky_cuda_error_says_the_context_is_lost(exc: BaseException) -> None:
    status, reason = classify(exc)
    assert status == "error" and reason.startswith("CUDA context lost"), reason
    assert context_lost(exc) == reason


def test_a_cycle_in_the_chain_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert [str(e) for e in chain(first)] == ["a", "b"]
    assert classify(first) == ("error", "RuntimeError: a")


@dataclass(frozen=True)
class FakeCase:
    """As much of a case as the executor reads: its key and device."""

    key: tuple[str, ...]
    device: str
    raises: BaseException | None = None


@dataclass
class FakeResult:
    outcome: str
    peak_rss_bytes: float = math.nan
    flags: list[str] = field(default_factory=list)


class FakeTarget:
    """Runs each case's work under its guard, as ``runner.execute_group`` does; counts calls;
    ``after``: raised once every case is done (a clean-up outside any case)."""

    def __init__(self, after: BaseException | None = None) -> None:
        self.calls, self.after = 0, after

    def __call__(self, group: list[Any], config: BenchConfig, profile_root: Path | None,
                 guard: Guard) -> list[Any]:
        self.calls += 1
        results = []
        for i, case in enumerate(group):
            try:
                with guard(i):
                    if case.raises is not None:
                        raise case.raises
                results.append(FakeResult("ran"))
            except CaseLost as exc:
                results.append(FakeResult(f"{exc.status}: {exc.reason}"))
            except Exception as exc:
                results.append(FakeResult(f"raised {type(exc).__name__}"))
        if self.after is not None:
            raise self.after
        return results


def _cases(device: str, *raises: BaseException | None) -> list[FakeCase]:
    return [FakeCase(("conv", f"impl{i}", device), device, r) for i, r in enumerate(raises)]


def test_after_a_sticky_error_later_cuda_cases_are_not_run_and_cpu_cases_go_on() -> None:
    target = FakeTarget()
    execute = InProcess(BenchConfig(layers=("conv",)), target)
    first = execute(_cases("cuda", None, accelerator_error(ILLEGAL_ACCESS, 700), None), None)
    assert [r.outcome for r in first[:2]] == ["ran", "raised AcceleratorError"]
    assert first[2].outcome.startswith("error: not run: conv/impl1/cuda lost this process's "
                                       "CUDA context"), first[2].outcome
    assert "--isolate" in first[2].outcome
    later = execute(_cases("cuda:1", None, None), None)
    assert target.calls == 1  # not even started
    assert all(isinstance(r, Lost) and r.status == "error" and "--isolate" in r.reason
               for r in later)
    cpu = execute(_cases("cpu", None), None)
    assert [r.outcome for r in cpu] == ["ran"] and target.calls == 2
    assert cpu[0].peak_rss_bytes > 0 or not memory.reset_peak()


def test_a_case_under_way_when_the_context_is_lost_is_cut_short() -> None:
    reasons = []

    def target(group: list[Any], config: BenchConfig, profile_root: Path | None,
               guard: Guard) -> list[Any]:
        with guard(0):  # its check and warm-up
            pass
        with pytest.raises(torch.AcceleratorError), guard(1):
            raise accelerator_error(ILLEGAL_ACCESS, 700)
        for index in (0, 2):  # the rounds go on
            with pytest.raises(CaseLost) as refused, guard(index):
                pass
            reasons.append(refused.value.reason)
        return [FakeResult("ran") for _ in group]

    InProcess(BenchConfig(layers=("conv",)), target)(_cases("cuda", None, None, None), None)
    assert [r.split(":")[0] for r in reasons] == ["cut short", "not run"]


def test_a_clean_up_that_meets_the_lost_context_keeps_every_row() -> None:
    lost = accelerator_error(ILLEGAL_ACCESS, 700)
    execute = InProcess(BenchConfig(layers=("conv",)), FakeTarget(after=lost))
    outcomes = execute(_cases("cuda", None, lost), None)
    assert all(isinstance(o, Lost) and o.status == "error" for o in outcomes)
    assert outcomes[1].reason.startswith("CUDA context lost")
    assert outcomes[0].reason.startswith("result lost: conv/impl1/cuda lost")
    with pytest.raises(ValueError):  # any other failure outside a case is not hidden
        InProcess(BenchConfig(layers=("conv",)), FakeTarget(after=ValueError("bug")))(
            _cases("cuda", None), None)


def test_sys_exit_in_a_case_is_its_error_and_ctrl_c_still_stops() -> None:
    execute = InProcess(BenchConfig(layers=("conv",)), FakeTarget())
    results = execute(_cases("cpu", SystemExit(4), None), None)
    assert results[0].outcome.startswith("error: SystemExit: the implementation called "
                                         "sys.exit(4)"), results[0].outcome
    assert results[1].outcome == "ran"
    with pytest.raises(KeyboardInterrupt):
        execute(_cases("cpu", KeyboardInterrupt()), None)


@pytest.mark.skipif(not memory.reset_peak(), reason="no resettable RSS high-water mark here")
def test_a_case_peak_rss_is_its_own_and_what_it_leaves_is_counted() -> None:
    watched, kept, before = memory.CaseMemory(2), [], memory.rss_bytes()
    with watched.watching(0):
        torch.ones(256 << 18).sum()  # 256 MiB touched, then freed (mapped: returned at once)
    with watched.watching(1):
        kept.append(torch.ones(128 << 18))  # 128 MiB kept
    assert watched.peak[0] >= before + (200 << 20) and watched.peak[1] >= before + (100 << 20)
    assert abs(watched.grown[0]) < 64 << 20 and watched.grown[1] > 100 << 20
    results = [FakeResult("ran"), FakeResult("ran")]
    watched.record(results)
    watched.recycled(results, 900 << 20, 512 << 20)
    assert results[1].peak_rss_bytes == watched.peak[1]
    assert results[1].flags[0].startswith("worker recycled: its RSS grew 900 MiB since it "
                                          "started (limit 512 MiB"), results[1].flags
    assert "this case left +128 MiB" in results[1].flags[0]


def test_the_worker_rss_limit_comes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memory.RSS_LIMIT_ENV, raising=False)
    assert memory.worker_rss_limit() == memory.WORKER_RSS_GROWTH_BYTES == 512 << 20
    for text, limit in (("100", 100 << 20), ("0", 0), ("lots", 512 << 20)):
        monkeypatch.setenv(memory.RSS_LIMIT_ENV, text)
        assert memory.worker_rss_limit() == limit

"""Run cases: check each against the reference, time it, and hand the result to a sink.

A case never crashes the run: an implementation that raises becomes an ``error`` row, one that
runs out of memory an ``oom`` row, a wrong one ``incorrect`` (timed all the same), a naive loop
predicted to exceed the budget ``skipped``, one that overruns ``--timeout`` a ``timeout`` row,
and one that kills its worker process (``--isolate``) an ``error`` row.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from impls.registry import DTYPE_NAMES, REGISTRY, Unsupported
from reports.record import Case, CaseResult
from reports.schema import TIMED
from suites.budget import predict
from suites.compilation import compiled
from suites.config import BenchConfig
from suites.correctness import TOLERANCES, Call, bind, check, make_trial, tolerance_key
from suites.devices import device, tf32_flags
from suites.isolation import Lost, executor
from suites.profiling import (
    NAIVE_SETTINGS,
    CaseProfile,
    ProfileSettings,
    ops_key,
    profile_case,
    trace_name,
)
from suites.timing import measure

NAN = float("nan")


class Sink(Protocol):
    """Receives each case as it starts and its result as soon as it ends."""

    def started(self, case: Case) -> None: ...

    def finished(self, result: CaseResult) -> None: ...


def run(config: BenchConfig, cases: list[Case], sinks: Sequence[Sink],
        profile_root: Path | None = None,
        ceilings: Mapping[str, dict[str, Any]] | None = None,
        baselines: Mapping[Case, float] | None = None) -> list[CaseResult]:
    """Run ``cases`` in order; each result goes to every sink as soon as it is known.

    Each case runs in this process or, with ``config.isolate``, in a worker process (see
    ``suites.isolation``). With ``config.profile``, each measured case is then profiled into
    ``profile_root/<case>/``. ``ceilings`` (device -> ``calibration.ceilings``) give each timed
    case its roofline fraction; ``baselines`` (eager builtin case -> median seconds) carry the
    builtins of an earlier part of a resumed run.
    """
    ceilings, known = ceilings or {}, dict(baselines or {})
    results = []
    # Objects alive now (torch, the registry, ...) are never garbage: moved out of the
    # collector's sight, the gc.collect() after each case takes ~1 ms instead of ~100 ms.
    gc.freeze()
    execute = executor(config, execute_case)
    try:
        for case in cases:
            for sink in sinks:
                sink.started(case)
            result = execute(case, profile_root)
            if isinstance(result, Lost):
                lost, result = result, new_result(case, config)
                result.status, result.reason = lost.status, lost.reason
            if case == case.baseline and result.status in TIMED:
                known[case] = result.median_s
            result.relate(known.get(case.baseline), ceilings.get(case.device), tf32_flags())
            for sink in sinks:
                sink.finished(result)
            results.append(result)
    except BaseException:  # Ctrl-C: stop the case in flight now, not after it ends
        execute.close(kill=True)
        raise
    execute.close()
    return results


def execute_case(case: Case, config: BenchConfig, profile_root: Path | None) -> CaseResult:
    """One case, all of it: check, time and (with ``config.profile``) profile."""
    result = run_case(case, config)
    if config.profile and profile_root is not None and result.status in TIMED:
        name = trace_name(case)
        try:
            found = profile_one(case, config.seed, profile_root / name,
                                chrome_trace=profile_root / name / "trace.json")
        except Exception as exc:  # a profiler failure must not lose the timing row
            result.ops = [{**ops_key(case, case.label), "op": "<profiler failed>",
                           "note": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}]
        else:
            result.ops, result.op_calls = found.ops, found.op_calls
            if math.isnan(result.peak_mem_bytes):  # measured in the timing pass where it can be
                result.peak_mem_bytes = found.peak_mem_bytes
    return result


def new_result(case: Case, config: BenchConfig) -> CaseResult:
    """A result with what is known before anything runs: FLOPs, bytes, tolerances."""
    layer, dtype = REGISTRY.layer(case.layer), DTYPE_NAMES[case.dtype]
    rtol, atol = TOLERANCES[tolerance_key(dtype, case.device)]
    return CaseResult(case, flops=layer.flops(case.size, case.mode),
                      bytes=layer.bytes_moved(case.size, dtype, case.mode), rtol=rtol, atol=atol,
                      threads=torch.get_num_threads(), seed=config.seed)


def run_case(case: Case, config: BenchConfig) -> CaseResult:
    """Check and time one case; failures become the result's status and reason."""
    impl, dtype = REGISTRY.impl(case.layer, case.impl), DTYPE_NAMES[case.dtype]
    result = new_result(case, config)
    where = device(case.device)
    unsupported = (impl.unsupported(case.device, dtype, case.mode, case.compile)
                   or where.dtype_problem(dtype))
    if unsupported:
        result.status, result.reason = "skipped", unsupported
        return result
    try:
        with torch.set_grad_enabled(case.mode != "fwd"), where.selected():
            _measure_case(case, config, result)
    except Unsupported as exc:
        result.status, result.reason, result.samples = "skipped", str(exc), None
    except Exception as exc:  # failure is data: the run goes on
        result.status, result.reason = _failure(exc)
        result.samples = None
    finally:
        where.release_memory()
    return result


def _measure_case(case: Case, config: BenchConfig, result: CaseResult) -> None:
    layer, impl = REGISTRY.layer(case.layer), REGISTRY.impl(case.layer, case.impl)
    dtype, params = DTYPE_NAMES[case.dtype], case.size
    if impl.naive:
        prediction = predict(impl, layer, params, dtype, case.device, case.mode, config)
        result.predicted_s, result.predicted_call_s = prediction.case_s, prediction.per_call_s
        if prediction.case_s > config.budget_s:
            result.status, result.reason = "skipped", prediction.reason(config.budget_s)
            return
    fn = compiled(impl.fn, case.compile)
    seeds = [config.seed + i for i in range(config.trials)]
    where = device(case.device)
    first_call_s = NAN
    if case.compile != "none":  # the first call compiles; time it alone
        first = bind(fn, make_trial(layer, params, seeds[0], dtype, case.device, case.mode))
        where.synchronize()
        start = time.perf_counter()
        first()
        where.synchronize()
        first_call_s = time.perf_counter() - start
    verdict, trial = check(fn, layer, params, seeds, dtype, case.device, case.mode)
    result.max_abs_err, result.rel_err = verdict.max_abs_err, verdict.rel_err
    result.grad_max_abs_err, result.grad_rel_err = verdict.grad_max_abs_err, verdict.grad_rel_err
    if not verdict.ok:
        result.status, result.reason = "incorrect", "; ".join(verdict.problems)
    step = bind(fn, trial)
    result.samples = measure(step, where, config.timing, torch.get_num_threads())
    if not math.isnan(first_call_s):
        result.compile_s = max(first_call_s - result.median_s, 0.0)
    peak = where.peak_memory_bytes(step)
    if peak is not None:
        result.peak_mem_bytes = peak


def profile_one(case: Case, seed: int, trace_dir: Path,
                settings: ProfileSettings | None = None,
                chrome_trace: Path | None = None) -> CaseProfile:
    """``case`` under the profiler, in a pass of its own (never part of the timing).

    Naive loops get ``NAIVE_SETTINGS`` unless ``settings`` says otherwise: one recorded call.
    """
    naive = REGISTRY.impl(case.layer, case.impl).naive
    settings = settings or (NAIVE_SETTINGS if naive else ProfileSettings())
    where = device(case.device)
    try:
        with torch.set_grad_enabled(case.mode != "fwd"), where.selected():
            return profile_case(prepared(case, seed), case, case.label, trace_dir, settings,
                                chrome_trace)
    finally:
        where.release_memory()


def prepared(case: Case, seed: int) -> Call:
    """One call of ``case`` on seeded inputs (``case.compile`` applied), everything set up:
    what the timing and the profiler call. Call it with grad mode as ``case.mode`` needs
    (``torch.set_grad_enabled(case.mode != "fwd")``)."""
    layer, impl = REGISTRY.layer(case.layer), REGISTRY.impl(case.layer, case.impl)
    trial = make_trial(layer, case.size, seed, DTYPE_NAMES[case.dtype], case.device, case.mode)
    return bind(compiled(impl.fn, case.compile), trial)


def _failure(exc: BaseException) -> tuple[str, str]:
    message = " ".join(str(exc).split())[:500]
    if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in message:
        return "oom", f"{type(exc).__name__}: {message}"
    return "error", f"{type(exc).__name__}: {message}"

"""Run cases: check each against the reference, time it, and hand the result to a sink.

The implementations of one size (a size group: same layer, device, dtype, mode and size, every
compile mode) are checked and warmed up one by one, then timed together in interleaved rounds
(``suites.rounds``), so that the speed against the builtin is a paired ratio. A case never
crashes the run: an implementation that raises becomes an ``error`` row, one that runs out of
memory an ``oom`` row, a wrong one ``incorrect`` (timed all the same), a naive loop predicted
to exceed the budget ``skipped``, one that overruns ``--timeout`` a ``timeout`` row, and one
that kills its worker process (``--isolate``) an ``error`` row.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from impls.registry import DTYPE_NAMES, REGISTRY, Unsupported
from reports.plausibility import INSTABILITY_TAGS
from reports.profile_page import TRACE_FILE
from reports.record import Case, CaseResult, Samples
from reports.schema import TIMED
from suites.budget import predict
from suites.compilation import compiled, graphed_on, reset_compiler
from suites.config import BenchConfig, TimingConfig
from suites.correctness import TOLERANCES, Call, bind, check, make_trial, tolerance_key
from suites.devices import Device, device, tf32_flags
from suites.environment import machine_key
from suites.executors import Executor, Local
from suites.faults import NOTE_CHARS, classify, describe, exit_reason
from suites.interference import interference, needed_cores
from suites.isolation import CaseLost, InProcess, Lost
from suites.profiling import (
    NAIVE_SETTINGS,
    CaseProfile,
    ProfileSettings,
    ops_key,
    profile_case,
    trace_name,
)
from suites.rounds import Contestant, Guard, run_rounds
from suites.timing import LAUNCH_BOUND_TAG, launch_bound, sampler, wall_per_call

NAN = float("nan")


class Sink(Protocol):
    """Receives each case as it starts and its result as soon as it ends."""

    def started(self, case: Case) -> None: ...

    def finished(self, result: CaseResult) -> None: ...


def groups(cases: Sequence[Case]) -> list[list[Case]]:
    """``cases`` cut into size groups, in order: the implementations (every compile mode) of one
    (layer, device, dtype, mode, size), timed together in interleaved rounds."""
    found: dict[tuple[str, ...], list[Case]] = {}
    for case in cases:
        found.setdefault(_size_key(case), []).append(case)
    return list(found.values())


def run(config: BenchConfig, cases: list[Case], sinks: Sequence[Sink],
        profile_root: Path | None = None,
        ceilings: Mapping[str, dict[str, Any]] | None = None,
        known: Mapping[Case, Samples] | None = None,
        engine: Executor | None = None) -> list[CaseResult]:
    """Run ``cases`` size group by size group; each result goes to every sink as soon as its
    group ends.

    ``engine`` runs the groups (``suites.executors``; default: here, in this process or, with
    ``config.isolate``, in a worker process). With ``config.profile``, each measured case is
    then profiled into ``profile_root/<case>/``. Each timed case gets its roofline fraction from
    the ceilings of the machine it ran on (``engine.machines``; ``ceilings``, device ->
    ``calibration.ceilings``, for this machine's); ``known`` holds the samples of cases timed
    in an earlier part of a resumed run (the builtins, the forward of a fwdbwd case).
    """
    known = dict(known or {})
    results = []
    # Objects alive now (torch, the registry, ...) are never garbage: moved out of the
    # collector's sight, the gc.collect() after each group takes ~1 ms instead of ~100 ms.
    gc.freeze()
    here = machine_key()
    engine = engine or Local(config, execute_group, {here: {"calibration": ceilings}})

    def started(case: Case) -> None:
        for sink in sinks:
            sink.started(case)

    try:
        for done in engine.results(groups(cases), profile_root, started):
            machine_ceilings = engine.machines.get(done.machine, {}).get("calibration") or {}
            for case, outcome in zip(done.group, done.outcomes, strict=True):
                result = outcome
                if isinstance(outcome, Lost):
                    result = new_result(case, config)
                    result.status, result.reason = outcome.status, outcome.reason
                result.machine = done.machine
                if result.status in TIMED and result.samples:
                    known[case] = result.samples
                judge(result, config, known, machine_ceilings.get(case.device))
                for sink in sinks:
                    sink.finished(result)
                results.append(result)
    except BaseException:  # Ctrl-C: stop the group in flight now, not after it ends
        engine.close(kill=True)
        raise
    engine.close()
    return results


def judge(result: CaseResult, config: BenchConfig, known: Mapping[Case, Samples],
          ceilings: dict[str, Any] | None) -> None:
    """What a result means beside the others: its speed against the builtin, roofline,
    plausibility, and whether it is stable (precise enough and undisturbed)."""
    case = result.case
    if result.status not in TIMED or not result.samples:
        return
    forward = known.get(dataclasses.replace(case, mode="fwd")) if case.mode == "fwdbwd" else None
    result.relate(known.get(case.baseline), ceilings, tf32_flags(), forward=forward)
    reasons = []
    if not result.precision <= config.timing.precision:
        reasons.append(f"imprecise: median{' and speedup' if case != case.baseline else ''} "
                       f"known to +-{result.precision:.1%}, target +-{config.timing.precision:.1%}"
                       f" (n={len(result.samples.seconds)})")
    if disturbed := interference(result.busy_cores, result.threads, device(case.device).kind):
        reasons.append(disturbed)
    judged = (*INSTABILITY_TAGS, LAUNCH_BOUND_TAG)  # decided here again when judged again
    result.flags = [*reasons, *(f for f in result.flags if not f.startswith(judged))]
    result.stable = not reasons
    samples = result.samples
    if bound := launch_bound(result.wall_s, samples.interval.hi, samples.median_s):
        result.flags.append(bound)


def execute_group(group: list[Case], config: BenchConfig, profile_root: Path | None,
                  guard: Guard) -> list[CaseResult]:
    """One size group, all of it: check and warm up each case, time them together in rounds,
    then (with ``config.profile``) profile each. ``guard(i)`` wraps all work on case ``i``."""
    results = [new_result(case, config) for case in group]
    where = device(group[0].device)
    if any(case.compile != "none" for case in group):
        reset_compiler(group[0].device)  # once per group: its compiled functions live side by side
    ready: dict[int, _Prepared] = {}
    try:
        with torch.set_grad_enabled(group[0].mode != "fwd"), where.selected():
            for i, case in enumerate(group):
                prepared_case = _guarded(results[i], guard(i), _prepare, case, config, results[i])
                if prepared_case is not None:
                    ready[i] = prepared_case
            indices = list(ready)
            run_rounds([p.contestant for p in ready.values()], config.timing,
                       seed=config.seed + zlib.crc32(repr(_size_key(group[0])).encode()),
                       guard=lambda position: guard(indices[position]))
            group_id = int.from_bytes(os.urandom(6), "little")
            for i, prepared_case in ready.items():
                _finish(results[i], prepared_case, group_id, guard(i), where, config.timing)
            if config.profile and profile_root is not None:  # the steps just timed, compiled
                for i, prepared_case in ready.items():
                    if results[i].status in TIMED:
                        _guarded(results[i], guard(i), _profile, results[i], config.seed,
                                 profile_root, prepared_case.step)
    finally:
        ready.clear()
        where.release_memory()
    return results


def run_case(case: Case, config: BenchConfig) -> CaseResult:
    """Check and time one case alone (a group of one); failures become its status and reason."""
    with InProcess(config, execute_group) as execute:
        return execute([case], None)[0]


def new_result(case: Case, config: BenchConfig) -> CaseResult:
    """A result with what is known before anything runs: FLOPs, bytes, tolerances."""
    layer, dtype = REGISTRY.layer(case.layer), DTYPE_NAMES[case.dtype]
    libraries = REGISTRY.impl(case.layer, case.impl).libraries
    rtol, atol = TOLERANCES[tolerance_key(dtype, case.device, libraries)]
    return CaseResult(case, flops=layer.flops(case.size, case.mode),
                      bytes=layer.bytes_moved(case.size, dtype, case.mode), rtol=rtol, atol=atol,
                      threads=needed_cores(torch.get_num_threads(), device(case.device).kind),
                      seed=config.seed,
                      tf32=device(case.device).uses_tf32(dtype, libraries))


@dataclass
class _Prepared:
    """A case checked and warmed up, ready for the rounds."""

    contestant: Contestant
    step: Call
    first_call_s: float  # the first call's time with torch.compile (it compiles), else NaN


def _prepare(case: Case, config: BenchConfig, result: CaseResult) -> _Prepared | None:
    """Check ``case`` and make it a warmed-up contestant (None: skipped)."""
    layer, impl = REGISTRY.layer(case.layer), REGISTRY.impl(case.layer, case.impl)
    dtype, params, where = DTYPE_NAMES[case.dtype], case.size, device(case.device)
    if unsupported := (impl.unsupported(case.device, dtype, case.mode, case.compile)
                       or where.dtype_problem(dtype)):
        result.status, result.reason = "skipped", unsupported
        return None
    if impl.naive:
        prediction = predict(impl, layer, params, dtype, case.device, case.mode, config)
        result.predicted_s, result.predicted_call_s = prediction.case_s, prediction.per_call_s
        if prediction.case_s > config.budget_s:
            result.status, result.reason = "skipped", prediction.reason(config.budget_s)
            return None
    fn = compiled(impl.fn, case.compile, reset=False, device=case.device)
    seeds = [config.seed + i for i in range(config.trials)]
    first_call_s = NAN
    if case.compile != "none":  # the first call compiles; time it alone
        first = bind(fn, make_trial(layer, params, seeds[0], dtype, case.device, case.mode))
        where.synchronize()
        start = time.perf_counter()
        first()
        where.synchronize()
        first_call_s = time.perf_counter() - start
    verdict, trial = check(fn, layer, params, seeds, dtype, case.device, case.mode,
                           impl.libraries)
    result.max_abs_err, result.rel_err = verdict.max_abs_err, verdict.rel_err
    result.grad_max_abs_err, result.grad_rel_err = verdict.grad_max_abs_err, verdict.grad_rel_err
    if not verdict.ok:
        result.status, result.reason = "incorrect", "; ".join(verdict.problems)
    step = bind(fn, trial, static_inputs=graphed_on(case.compile, where.kind))
    contestant = sampler(step, where, config.timing)
    contestant.anchor = case == case.baseline
    return _Prepared(contestant, step, first_call_s)


GRAPH_POOL_TAG = "graph pool"


def _finish(result: CaseResult, prepared_case: _Prepared, group_id: int,
            guard: AbstractContextManager[None], where: Device, timing: TimingConfig) -> None:
    """The samples the rounds took of a case, or its failure; on a device timed by events,
    also the wall time of back-to-back calls (``wall_s``: launches included)."""
    contestant = prepared_case.contestant
    if contestant.failure is not None:
        result.status, result.reason = _failure(contestant.failure)
        return
    result.samples = contestant.samples(group_id)
    result.busy_cores = contestant.meter.busy_cores
    if not math.isnan(prepared_case.first_call_s):
        result.compile_s = max(prepared_case.first_call_s - result.median_s, 0.0)
    if graphed_on(result.case.compile, where.kind):  # allocated once, in the graph's pool
        result.flags.append(f"{GRAPH_POOL_TAG}: peak memory not measured: --compile "
                            f"{result.case.compile} replays a CUDA graph from its private pool")
    elif (peak := _guarded(result, guard, where.peak_memory_bytes, prepared_case.step)) is not None:
        result.peak_mem_bytes = peak
    if where.event_timing and result.status in TIMED:
        wall = _guarded(result, guard, wall_per_call, prepared_case.step, where, timing.block_s)
        if wall is not None:
            result.wall_s = wall


def _profile(result: CaseResult, seed: int, profile_root: Path, step: Call) -> None:
    """``result``'s case under the profiler (``step``: the call the timing took, compiled
    already, so the profile pass never compiles again within the case's --timeout): its traces
    and page files into ``profile_root/<trace_name>/``, its operators and calls into
    ``result``."""
    case, case_dir = result.case, profile_root / trace_name(result.case)
    try:
        found = profile_one(case, seed, case_dir, chrome_trace=case_dir / TRACE_FILE, step=step)
        found.write(case_dir)
    except CaseLost:
        raise
    except Exception as exc:  # a profiler failure must not lose the timing row
        result.ops = [{**ops_key(case, case.label), "op": "<profiler failed>",
                       "note": describe(exc, NOTE_CHARS)}]
    else:
        result.ops, result.op_calls = found.ops, found.op_calls
        if math.isnan(result.peak_mem_bytes):  # measured in the timing pass where it can be
            result.peak_mem_bytes = found.peak_mem_bytes


def _guarded(result: CaseResult, guard: AbstractContextManager[None],
             work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)`` under ``guard``; a failure becomes ``result``'s status (returns None)."""
    try:
        with guard:
            return work(*args)
    except Unsupported as exc:
        result.status, result.reason, result.samples = "skipped", str(exc), None
    except (Exception, SystemExit) as exc:  # failure is data: the run goes on
        result.status, result.reason = _failure(exc)
        result.samples = None
    return None


def _size_key(case: Case) -> tuple[str, ...]:
    return (case.layer, case.device, case.dtype, case.mode, case.label)


def profile_one(case: Case, seed: int, trace_dir: Path,
                settings: ProfileSettings | None = None,
                chrome_trace: Path | None = None, step: Call | None = None) -> CaseProfile:
    """``case`` under the profiler, in a pass of its own (never part of the timing): ``step``
    where given (a call already set up and compiled), else a fresh one (``prepared``).

    Naive loops get ``NAIVE_SETTINGS`` unless ``settings`` says otherwise: one recorded call.
    """
    naive = REGISTRY.impl(case.layer, case.impl).naive
    settings = settings or (NAIVE_SETTINGS if naive else ProfileSettings())
    where = device(case.device)
    try:
        with torch.set_grad_enabled(case.mode != "fwd"), where.selected():
            return profile_case(step or prepared(case, seed), case, case.label, trace_dir,
                                settings, chrome_trace)
    finally:
        where.release_memory()


def prepared(case: Case, seed: int) -> Call:
    """One call of ``case`` on seeded inputs (``case.compile`` applied), everything set up:
    what the timing and the profiler call. Call it with grad mode as ``case.mode`` needs
    (``torch.set_grad_enabled(case.mode != "fwd")``)."""
    layer, impl = REGISTRY.layer(case.layer), REGISTRY.impl(case.layer, case.impl)
    trial = make_trial(layer, case.size, seed, DTYPE_NAMES[case.dtype], case.device, case.mode)
    return bind(compiled(impl.fn, case.compile, device=case.device), trial)


def _failure(exc: BaseException) -> tuple[str, str]:
    """The status and reason of a case that raised ``exc`` (``suites.faults.classify``)."""
    if isinstance(exc, CaseLost):
        return exc.status, exc.reason
    if isinstance(exc, SystemExit):
        return "error", exit_reason(exc)
    return classify(exc)

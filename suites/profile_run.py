"""The ``profile`` command: one case under ``torch.profiler``, its operator table, traces, ops.csv
and figures.

A naive loop is profiled at the notes' size only if its recorded calls fit the budget (the
profiler roughly triples a call's time); otherwise at its calibration size, which says the same
about where the time goes, or, for a size the user gave, not at all (exit 2, with a size that
fits).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pandas as pd
import torch

from impls import DTYPE_NAMES, MODES, REGISTRY
from reports.columns import size_bytes, time_ms
from reports.console import console, ops_table, say
from reports.outcome import EXIT_FAILED, EXIT_OK, UsageError
from reports.profile_page import case_page, per_call_text
from reports.record import Case
from reports.schema import KEY_COLUMNS, OPS_COLUMNS, CsvAppender, write_json
from reports.style import format_seconds
from reports.writer import new_run_dir
from suites.budget import predict
from suites.cases import new_case
from suites.compilation import COMPILE_MODES, use_project_cache
from suites.config import BenchConfig, ProfileOptions
from suites.environment import machine_info
from suites.faults import NOTE_CHARS, describe
from suites.presets import notes_size
from suites.profiling import (
    NAIVE_SETTINGS,
    CaseProfile,
    ProfileSettings,
    quietly,
    trace_name,
)
from suites.resolve import choose, choose_devices, custom_size, layer_names, load_impl_files
from suites.runner import prepared, profile_one
from suites.session import set_threads

#: how much longer a call takes under the profiler (shapes, memory and stacks recorded)
PROFILER_SLOWDOWN = 3
#: most operator events the recorded calls may hold: the profiler keeps every one, with its
#: shapes and allocations, at ~4.4 KB each (the five-loop conv on one MNIST digit: 378,000
#: events, 2.1 GB; on the notes' 64 digits, 24 million events, the process grew past 24 GB
#: and the OOM killer ended it)
MAX_PROFILED_EVENTS = 1_000_000


def profile(options: ProfileOptions) -> int:
    """Profile the case ``options`` name; write and print what it found; the exit code."""
    load_impl_files(options.run.impl_files)
    (layer,) = layer_names((options.layer,))
    try:
        found = REGISTRY.impl(layer, options.impl)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    (device,) = choose_devices((options.device,))
    choose("dtype", (options.dtype,), DTYPE_NAMES)
    choose("mode", (options.mode,), MODES)
    choose("compile mode", (options.compile_mode,), COMPILE_MODES)
    default = NAIVE_SETTINGS if found.naive else ProfileSettings()
    settings = ProfileSettings(
        wait=default.wait if options.wait is None else options.wait, warmup=options.warmup,
        active=default.active if options.active is None else options.active,
        with_stack=options.stacks)
    size = custom_size(layer, options.size) if options.size else notes_size(layer)
    if problem := found.unsupported(device, DTYPE_NAMES[options.dtype], options.mode,
                                    options.compile_mode):
        raise UsageError(f"{layer}/{options.impl}: {problem}")
    set_threads(options.run.threads)
    config = BenchConfig(layers=(layer,), impls=(options.impl,), devices=(device,),
                         dtypes=(options.dtype,), modes=(options.mode,),
                         compile_modes=(options.compile_mode,), budget_s=options.budget_s,
                         seed=options.seed, threads=options.run.threads, out=options.run.out,
                         profile=True)
    case = new_case(layer, options.impl, options.compile_mode, size, device, options.dtype,
                    options.mode)
    if found.naive:
        case = affordable(case, config, settings, explicit=options.size is not None)
    try:
        run_dir = new_run_dir(options.run.out, f"profile-{layer}-{options.impl}")
    except OSError as exc:
        raise UsageError(f"--out {options.run.out}: cannot create the directory "
                         f"({exc.strerror or exc})") from None
    use_project_cache()
    say(
        f"profiling {layer}/{options.impl} {case.label} ({device} {options.dtype} "
        f"{options.mode}, compile {options.compile_mode}; wait {settings.wait}, warm-up "
        f"{settings.warmup}, active {settings.active}) -> {run_dir}", stderr=True)
    try:
        with torch.set_grad_enabled(options.mode != "fwd"):
            result = profile_one(case, options.seed, run_dir / "tb" / trace_name(case), settings,
                                 chrome_trace=run_dir / "trace.json")
    except (Exception, SystemExit) as exc:  # it failed, or called sys.exit: like an error row
        say(f"error: {layer}/{options.impl} failed under the profiler: "
            f"{describe(exc, NOTE_CHARS)}", stderr=True)
        return EXIT_FAILED
    _write(run_dir, case, result, config, settings, options.top)
    return EXIT_OK


def affordable(case: Case, config: BenchConfig, settings: ProfileSettings,
               explicit: bool) -> Case:
    """A naive loop's case, or its calibration size when the profiled calls would exceed the
    budget; a size the user chose (``explicit``) that does not fit is bad input."""
    spec, impl = REGISTRY.layer(case.layer), REGISTRY.impl(case.layer, case.impl)
    calls = settings.warmup + settings.active
    small = new_case(case.layer, case.impl, case.compile, spec.calibration_params(case.size),
                     case.device, case.dtype, case.mode)
    per_call = predict(impl, spec, case.size, DTYPE_NAMES[case.dtype], case.device, case.mode,
                       config).per_call_s
    needed = per_call * calls * PROFILER_SLOWDOWN
    scale = spec.flops(case.size, case.mode) / max(spec.flops(small.size, case.mode), 1)
    events = round(_events_per_call(small, config.seed) * scale) * calls
    if needed <= config.budget_s and events <= MAX_PROFILED_EVENTS:
        return case
    why = (f"predicted {format_seconds(needed)} under the profiler > --budget "
           f"{format_seconds(config.budget_s)}" if needed > config.budget_s else
           f"about {events:,} operator events to record, more than the {MAX_PROFILED_EVENTS:,} "
           "that fit in memory")
    if explicit:
        raise UsageError(f"{case.layer}/{case.impl} at {case.label}: {why}; "
                         f"{'raise --budget or ' if needed > config.budget_s else ''}profile a "
                         f"smaller --size (e.g. {small.label})")
    say(f"{case.impl} at the notes' size {case.label}: {why}; profiling {small.label} instead",
        stderr=True)
    return small


def _events_per_call(case: Case, seed: int) -> int:
    """Operator events the profiler records in one call of ``case`` (a small one)."""
    step = prepared(case, seed)
    prof = torch.profiler.profile()
    with torch.set_grad_enabled(case.mode != "fwd"), quietly(prof):
        step()
    return len(prof.events())


def _write(run_dir: Path, case: Case, result: CaseProfile, config: BenchConfig,
           settings: ProfileSettings, top: int) -> None:
    """ops.csv, meta.json, the page's files, figures and page, and the printed summary of a
    ``profile`` run."""
    appender = CsvAppender(run_dir / "ops.csv", OPS_COLUMNS)
    appender.append(result.ops)
    appender.close()
    write_json(run_dir / "meta.json", {
        "command": sys.argv, "config": dataclasses.asdict(config),
        "profile": dataclasses.asdict(settings),
        "case": dict(zip(KEY_COLUMNS, case.key, strict=True)), "op_calls": result.op_calls,
        "peak_mem_bytes": result.peak_mem_bytes, "step_ms": result.step_ms,
        "machine": machine_info([case.device])})
    result.write(run_dir)
    ops = pd.DataFrame(result.ops, columns=list(OPS_COLUMNS))
    tb = run_dir / "tb"
    page = case_page(run_dir, ops, run_dir / "profile.html", tensorboard_dir=tb)
    figures = sorted(p for p in run_dir.iterdir() if p.suffix in (".png", ".svg"))
    console().print(ops_table(ops, top, f"{case.layer}/{case.impl} {case.label}"))
    steps = len(result.step_ms)
    for line in (per_call_text(result.step_ms),
                 f"  per call (mean of {steps} active step{'s' if steps != 1 else ''}): "
                 f"{result.op_calls:,.0f} operators launched, "
                 f"{time_ms(ops['self_cpu_us'].sum() / 1e3)} of CPU self time, peak memory "
                 f"{size_bytes(result.peak_mem_bytes)} beyond the inputs",
                 f"page: {page}  (works offline: open it in a browser)",
                 f"ops.csv: {run_dir / 'ops.csv'}",
                 f"figures: {', '.join(map(str, figures))}",
                 f"TensorBoard: tensorboard --logdir {tb}  (PyTorch Profiler tab; needs "
                 "torch-tb-profiler, and internet access: its views load their chart library "
                 "online)",
                 f"Perfetto: open {run_dir / 'trace.json'} at https://ui.perfetto.dev (needs "
                 "internet access: the UI loads online), or chrome://tracing"):
        say(line)

"""layerbench command line: ``python cli.py bench conv --device cuda``.

Thin on purpose: options become a frozen ``BenchConfig``, then one function per command runs.
Exit codes: 0 success; 1 a wrong implementation or an error; 2 bad usage or input (one line on
stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console
from rich.table import Table

from impls import DTYPE_NAMES, MODES, REGISTRY
from reports.console import ProgressBar, problems, summary_tables
from reports.meta import ceiling_text
from reports.schema import KEY_COLUMNS, RunDataError, load_run
from reports.writer import RunWriter, new_run_dir, open_resumed
from suites import calibration
from suites.cases import Case, plan
from suites.compilation import COMPILE_MODES, PROJECT_ROOT, use_project_cache
from suites.config import BenchConfig, TimingConfig, config_from_dict
from suites.environment import available_devices, device_problem, machine_info
from suites.presets import PRESET_NAMES, notes_size, parse_size
from suites.profiling import trace_name
from suites.runner import run
from suites.timing import steady_malloc

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class InputError(click.ClickException):
    """Bad usage or input: one line on stderr, exit code 2."""

    exit_code = EXIT_USAGE


def _split(values: Iterable[str]) -> tuple[str, ...]:
    """``("a,b", "c")`` -> ``("a", "b", "c")``: options accept repeats and comma lists."""
    return tuple(dict.fromkeys(v.strip() for value in values for v in value.split(",")
                               if v.strip()))


def _choose(option: str, values: tuple[str, ...], choices: Iterable[str],
            everything: tuple[str, ...] | None = None) -> tuple[str, ...]:
    choices = tuple(choices)
    if everything is not None and "all" in values:
        return everything
    for value in values:
        if value not in choices:
            raise InputError(f"unknown {option} {value!r} (choose from "
                             f"{', '.join(choices + (('all',) if everything else ()))})")
    return values


def _devices(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--device`` values, each checked to be present here (``all``: those that are)."""
    named = _split(values)
    devices = _choose("device", named,
                      ("cpu", "cuda", "mps", *(d for d in named if d.startswith("cuda:"))),
                      everything=tuple(available_devices()))
    for device in devices:
        if problem := device_problem(device):
            raise InputError(problem)
    return devices


def _console(stderr: bool = False) -> Console:
    """A console that keeps tables whole when output goes to a file or a CI log."""
    console = Console(stderr=stderr)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, width=160)
    return console


def _load_impl_files(paths: tuple[Path, ...]) -> None:
    for path in paths:
        try:
            REGISTRY.load_file(path)
        except ValueError as exc:
            raise InputError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Benchmark and check hand-written layer implementations against the PyTorch built-ins."""


@cli.command("list")
@click.argument("layer", required=False)
@click.option("--impl-file", "impl_files", multiple=True, type=click.Path(path_type=Path),
              help="Python file registering your own implementations (repeatable).")
def list_command(layer: str | None, impl_files: tuple[Path, ...]) -> None:
    """Layers, their implementations, and what each supports."""
    _load_impl_files(impl_files)
    layers = REGISTRY.layers()
    if layer is not None:
        layers = [REGISTRY.layer(n) for n in _choose("layer", (layer,), [x.name for x in layers])]
    table = Table(title="layerbench implementations", title_justify="left")
    for column in ("layer", "impl", "devices", "dtypes", "modes", "compile", "notes"):
        table.add_column(column)
    short = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}
    for spec in layers:
        for impl in REGISTRY.impls(spec.name):
            dtypes = [short[n] for n, d in DTYPE_NAMES.items() if d in impl.dtypes]
            notes = " ".join(filter(None, (impl.description, impl.notes,
                                           "[naive loop: budgeted]" if impl.naive else "")))
            if not impl.source.startswith(str(Path(__file__).resolve().parent / "impls")):
                notes += f" (from {impl.source})"
            table.add_row(spec.name, impl.name, ",".join(sorted(impl.devices)), ",".join(dtypes),
                          ",".join(m for m in MODES if m in impl.modes and m in spec.modes),
                          "yes" if impl.compilable else "no", notes)
    _console().print(table)


@cli.command("bench")
@click.argument("layer", required=False)
@click.option("--device", "devices", multiple=True, default=("cpu",), show_default=True,
              help="cpu, cuda, cuda:N, mps or all (repeatable, or comma-separated).")
@click.option("--dtype", "dtypes", multiple=True, default=("float32",), show_default=True,
              help=f"{', '.join(DTYPE_NAMES)} or all.")
@click.option("--mode", "modes", multiple=True, default=("fwd",), show_default=True,
              help="fwd (forward, no grad), fwdbwd (forward + backward), train (one SGD "
                   "step, layers that offer it) or all.")
@click.option("--impl", "impls", multiple=True, help="Implementations to run (default: all).")
@click.option("--compile", "compile_modes", multiple=True, default=("none",), show_default=True,
              help=f"torch.compile modes: {', '.join(COMPILE_MODES)}.")
@click.option("--preset", default="default", show_default=True,
              help="Sizes: quick, default or full.")
@click.option("--size", default=None, help="One custom size, e.g. N=8,C_in=3 (the rest from "
              "the notes' configuration).")
@click.option("--budget", "budget_s", default=10.0, show_default=True, type=float,
              help="Seconds a naive-loop case may take; predicted longer means skipped.")
@click.option("--min-time", "min_time_s", default=0.5, show_default=True, type=float,
              help="Seconds of timing samples per case.")
@click.option("--trials", default=3, show_default=True, type=click.IntRange(1),
              help="Correctness trials (fresh random inputs each).")
@click.option("--threads", default=0, type=click.IntRange(0),
              help="CPU threads (default: torch's default).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--profile", is_flag=True, help="Also profile each case (traces and ops.csv).")
@click.option("--out", default=Path("results"), show_default=True, type=click.Path(path_type=Path))
@click.option("--impl-file", "impl_files", multiple=True, type=click.Path(path_type=Path),
              help="Python file registering your own implementations (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-report", is_flag=True, help="Skip the plots and report.html/report.md.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Seconds one case may take in all (checks, compile, timing); beyond it the "
                   "case is a `timeout` row. Hard (the worker is killed) with --isolate.")
@click.option("--isolate/--no-isolate", default=None,
              help="Run each case in a worker process: a hard --timeout, and a crash costs one "
                   "case, not the run. Default: on with --impl-file or torch.compile.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Finish an interrupted run in RUN_DIR: its remaining cases, with the "
                   "configuration recorded in its meta.json (other options are ignored).")
def bench_command(layer: str | None, devices: tuple[str, ...], dtypes: tuple[str, ...],
                  modes: tuple[str, ...], impls: tuple[str, ...],
                  compile_modes: tuple[str, ...], preset: str, size: str | None,
                  budget_s: float, min_time_s: float, trials: int, threads: int, seed: int,
                  profile: bool, out: Path, impl_files: tuple[Path, ...], quiet: bool,
                  no_report: bool, timeout_s: float, isolate: bool | None,
                  resume: Path | None) -> None:
    """Run LAYER's suite (or `all`) and write results/<run-id>/."""
    if resume is not None:
        sys.exit(_resume_bench(resume, quiet, report=not no_report))
    if layer is None:
        raise InputError("missing LAYER (a layer name or all; or --resume RUN_DIR)")
    _load_impl_files(impl_files)
    layer_names = [x.name for x in REGISTRY.layers()]
    layers = _choose("layer", (layer,), layer_names, everything=tuple(layer_names))
    devices = _devices(devices)
    custom: tuple[tuple[str, int], ...] = ()
    if size is not None:
        if len(layers) != 1:
            raise InputError("--size needs a single layer, not 'all'")
        try:
            custom = tuple(parse_size(size, notes_size(layers[0]),
                                      REGISTRY.layer(layers[0])).items())
        except ValueError as exc:
            raise InputError(str(exc)) from None
    config = BenchConfig(
        layers=layers,
        impls=_split(impls),
        devices=devices,
        dtypes=_choose("dtype", _split(dtypes), DTYPE_NAMES, everything=tuple(DTYPE_NAMES)),
        modes=_choose("mode", _split(modes), MODES, everything=MODES),
        compile_modes=_choose("compile mode", _split(compile_modes), COMPILE_MODES),
        preset=_choose("preset", (preset,), PRESET_NAMES)[0],
        size=custom, budget_s=budget_s, trials=trials, seed=seed, threads=threads,
        profile=profile, timing=TimingConfig(min_time_s=min_time_s), out=out,
        impl_files=impl_files, timeout_s=timeout_s,
        isolate=isolate if isolate is not None else bool(
            impl_files or set(_split(compile_modes)) - {"none"}),
    )
    cases = _plan(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        what = config.layers[0] if len(config.layers) == 1 else "all"
        run_dir = new_run_dir(config.out, "-".join((what, *config.devices)))
    except OSError as exc:
        raise InputError(f"--out {config.out}: cannot create the run directory "
                         f"({exc.strerror or exc})") from None
    writer, ceilings = _open_writer(config, run_dir, _console(stderr=True))
    sys.exit(_run_bench(config, cases, writer, quiet, report=not no_report, ceilings=ceilings))


def _plan(config: BenchConfig) -> list[Case]:
    try:
        return plan(config)
    except (KeyError, ValueError) as exc:
        raise InputError(str(exc.args[0]) if exc.args else str(exc)) from None


def _params(config: BenchConfig) -> list[str]:
    return [p for name in config.layers for p in REGISTRY.layer(name).params]


def _resume_bench(run_dir: Path, quiet: bool, report: bool) -> int:
    """Run the cases of ``run_dir`` that have no result row yet, appending to its files."""
    try:
        meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
        config = config_from_dict(meta["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--resume {run_dir}: no usable meta.json ({exc})") from None
    _load_impl_files(config.impl_files)
    for device in config.devices:
        if problem := device_problem(device):
            raise InputError(f"--resume {run_dir}: {problem}")
    cases = _plan(config)
    try:
        meta, rows = open_resumed(run_dir, _params(config))
    except RunDataError as exc:
        raise InputError(str(exc)) from None
    done = {tuple(r[k] for k in KEY_COLUMNS): r for r in rows}
    todo = [c for c in cases if c.key not in done]
    baselines = {c: float(done[c.key]["median_ms"]) / 1e3 for c in cases
                 if c.key in done and c == c.baseline
                 and done[c.key]["status"] in ("ok", "incorrect")}
    if config.threads:
        torch.set_num_threads(config.threads)
    console = _console(stderr=True)
    console.print(f"resuming {run_dir}: {len(rows)} of {len(cases)} cases already done")
    ceilings = _all_ceilings(config, console)
    writer = RunWriter(run_dir, _params(config), {**meta, "calibration": ceilings},
                       resumed=True)
    return _run_bench(config, todo, writer, quiet, report, ceilings, baselines)


def _run_bench(config: BenchConfig, cases: list[Case], writer: RunWriter, quiet: bool,
               report: bool, ceilings: dict[str, Any],
               baselines: dict[Case, float] | None = None) -> int:
    """Run ``cases`` into the writer's run directory; print the summary; return the exit code."""
    use_project_cache()
    run_dir = writer.run_dir
    console = _console(stderr=True)
    console.print(f"layerbench: {len(cases)} cases -> {run_dir}"
                  + (" (each in a worker process)" if config.isolate else ""))
    try:
        with ProgressBar(len(cases), console, enabled=not quiet) as bar:
            run(config, cases, [writer, bar], profile_root=writer.profile_dir,
                ceilings=ceilings, baselines=baselines)
    except KeyboardInterrupt:
        writer.close(interrupted=True)
        console.print(f"interrupted: the finished cases are in {run_dir / 'results.csv'}; "
                      f"finish with `python cli.py bench --resume {run_dir}`", markup=False)
        return EXIT_INTERRUPTED
    writer.close(interrupted=False)
    frame, _ = load_run(run_dir)
    out = _console()
    for table in summary_tables(frame):
        out.print(table)
    for line in problems(frame):
        out.print(line, markup=False, highlight=False)
    out.print(f"results: {run_dir}")
    if report:
        _report(run_dir, out)
    failed = frame["status"].isin(["incorrect", "error"]).any()
    return EXIT_FAILURES if failed else EXIT_OK


def _open_writer(config: BenchConfig, run_dir: Path,
                 console: Console) -> tuple[RunWriter, dict[str, Any]]:
    """The writer of a new run in ``run_dir`` (meta.json written), and the devices' ceilings."""
    ceilings = _all_ceilings(config, console)
    meta = {"command": sys.argv, "config": dataclasses.asdict(config),
            "machine": machine_info(list(config.devices)), "calibration": ceilings}
    return RunWriter(run_dir, _params(config), meta), ceilings


def _all_ceilings(config: BenchConfig, console: Console) -> dict[str, Any]:
    return {device: _ceilings(device, console) for device in config.devices}


def _ceilings(device: str, console: Console) -> dict[str, object]:
    """The device's cached ceilings; measured first (a few seconds) when none are cached."""
    fresh = not calibration.cache_path(device).is_file()
    if fresh:
        console.print(f"calibrating {device} once (peak matmul FLOP/s, copy bandwidth) ...")
    measured = calibration.ceilings(device)
    if fresh and (warning := calibration.busy_warning(measured)):
        console.print(f"warning: {warning}", markup=False)
    return measured


def _report(run_dir: Path, console: Console) -> None:
    """Build the run's report; a failure here is reported but never loses the results."""
    from reports.report import build_report

    try:
        paths = build_report(run_dir)
    except Exception as exc:  # the results are on disk: say so and keep the exit code
        console.print(f"report failed ({type(exc).__name__}: {exc}); retry with "
                      f"`python cli.py report {run_dir}`", markup=False)
        return
    console.print(f"report: {paths[0]} ({len(paths) - 2} figures)", markup=False)


@cli.command("profile")
@click.argument("layer")
@click.option("--impl", required=True, help="The implementation to profile.")
@click.option("--size", default=None, help="k=v,... on top of the notes' size (default: the "
              "notes' size; for a naive loop too slow there, its calibration size).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps.")
@click.option("--dtype", default="float32", show_default=True, help=", ".join(DTYPE_NAMES))
@click.option("--mode", default="fwd", show_default=True, help=", ".join(MODES))
@click.option("--compile", "compile_mode", default="none", show_default=True,
              help=f"torch.compile mode: {', '.join(COMPILE_MODES)}.")
@click.option("--wait", default=None, type=click.IntRange(0),
              help="Calls before recording (default 1; naive loops 0).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0),
              help="Calls recorded, then dropped.")
@click.option("--active", default=None, type=click.IntRange(1),
              help="Calls recorded and averaged (default 3; naive loops 1).")
@click.option("--stacks", is_flag=True, help="Record Python stacks (TensorBoard's stack view).")
@click.option("--budget", "budget_s", default=60.0, show_default=True, type=float,
              help="Seconds the profiled calls of a naive loop may take (predicted).")
@click.option("--threads", default=0, type=click.IntRange(0),
              help="CPU threads (default: torch's default).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--top", default=15, show_default=True, type=click.IntRange(1),
              help="Operators in the printed table.")
@click.option("--out", default=Path("results"), show_default=True,
              type=click.Path(path_type=Path))
@click.option("--impl-file", "impl_files", multiple=True, type=click.Path(path_type=Path),
              help="Python file registering your own implementations (repeatable).")
def profile_command(layer: str, impl: str, size: str | None, device: str, dtype: str, mode: str,
                    compile_mode: str, wait: int | None, warmup: int, active: int | None,
                    stacks: bool, budget_s: float, threads: int, seed: int, top: int, out: Path,
                    impl_files: tuple[Path, ...]) -> None:
    """Run one case of LAYER under torch.profiler: operator table, traces, ops.csv, figures."""
    from suites.profiling import NAIVE_SETTINGS, ProfileSettings
    from suites.runner import profile_one

    _load_impl_files(impl_files)
    layer = _choose("layer", (layer,), [x.name for x in REGISTRY.layers()])[0]
    spec = REGISTRY.layer(layer)
    try:
        found = REGISTRY.impl(layer, impl)
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    (device,) = _devices((device,))
    _choose("dtype", (dtype,), DTYPE_NAMES)
    _choose("mode", (mode,), MODES)
    _choose("compile mode", (compile_mode,), COMPILE_MODES)
    naive = found.naive
    default = NAIVE_SETTINGS if naive else ProfileSettings()
    settings = ProfileSettings(wait=default.wait if wait is None else wait, warmup=warmup,
                               active=default.active if active is None else active,
                               with_stack=stacks)
    try:
        params = parse_size(size, notes_size(layer), spec) if size else notes_size(layer)
        spec.check(params)
    except ValueError as exc:
        raise InputError(f"--size: {exc}") from None
    if threads:
        torch.set_num_threads(threads)
    config = BenchConfig(layers=(layer,), impls=(impl,), devices=(device,), dtypes=(dtype,),
                         modes=(mode,), compile_modes=(compile_mode,), budget_s=budget_s,
                         seed=seed, threads=threads, out=out, profile=True)
    case = Case(layer, impl, compile_mode, tuple((p, params[p]) for p in spec.params), device,
                dtype, mode)
    if problem := found.unsupported(device, DTYPE_NAMES[dtype], mode, compile_mode):
        raise InputError(f"{layer}/{impl}: {problem}")
    console = _console(stderr=True)
    if naive:
        case = _affordable(case, config, settings, explicit=size is not None, console=console)
    try:
        run_dir = new_run_dir(out, f"profile-{layer}-{impl}")
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create the directory ({exc.strerror or exc})") \
            from None
    use_project_cache()
    console.print(f"profiling {layer}/{impl} {case.label} ({device} {dtype} {mode}, compile "
                  f"{compile_mode}; wait {settings.wait}, warm-up {settings.warmup}, active "
                  f"{settings.active}) -> {run_dir}", markup=False)
    try:
        with torch.set_grad_enabled(mode != "fwd"):
            result = profile_one(case, seed, run_dir / "tb" / trace_name(case), settings,
                                 chrome_trace=run_dir / "trace.json")
    except Exception as exc:  # the implementation failed: say so, like a bench error row
        click.echo(f"error: {layer}/{impl} failed under the profiler: {type(exc).__name__}: "
                   f"{' '.join(str(exc).split())[:300]}", err=True)
        sys.exit(EXIT_FAILURES)
    _write_profile(run_dir, case, result, config, settings, top)


def _affordable(case: Case, config: BenchConfig, settings: Any, explicit: bool,
                console: Console) -> Case:
    """A naive loop's case, or its calibration size when the calls would exceed the budget."""
    from suites.budget import predict
    from suites.timing import format_seconds

    spec, impl = REGISTRY.layer(case.layer), REGISTRY.impl(case.layer, case.impl)
    dtype = DTYPE_NAMES[case.dtype]
    per_call = predict(impl, spec, case.size, dtype, case.device, case.mode, config).per_call_s
    needed = per_call * (settings.warmup + settings.active) * 3  # the profiler's overhead
    if needed <= config.budget_s:
        return case
    small = spec.calibration_params(case.size)
    label = spec.label(small)
    if explicit:
        raise InputError(f"{case.layer}/{case.impl} at {case.label}: predicted "
                         f"{format_seconds(needed)} under the profiler > --budget "
                         f"{format_seconds(config.budget_s)}; raise --budget or profile a smaller"
                         f" --size (e.g. {label})")
    console.print(f"{case.impl} at the notes' size {case.label} would take "
                  f"{format_seconds(needed)} under the profiler (> --budget "
                  f"{format_seconds(config.budget_s)}): profiling {label} instead", markup=False)
    return dataclasses.replace(case, params=tuple((p, small[p]) for p in spec.params))


def _write_profile(run_dir: Path, case: Case, result: Any, config: BenchConfig,
                   settings: Any, top: int) -> None:
    """ops.csv, meta.json, figures and the printed summary of a ``profile`` run."""
    import pandas as pd

    from reports.profile_plots import case_figures
    from reports.schema import OPS_COLUMNS, CsvAppender, write_json

    appender = CsvAppender(run_dir / "ops.csv", OPS_COLUMNS)
    appender.append(result.ops)
    appender.close()
    write_json(run_dir / "meta.json", {
        "command": sys.argv, "config": dataclasses.asdict(config),
        "profile": dataclasses.asdict(settings), "case": dict(zip(KEY_COLUMNS, case.key,
                                                                  strict=True)),
        "op_calls": result.op_calls, "peak_mem_bytes": result.peak_mem_bytes,
        "machine": machine_info([case.device])})
    ops = pd.DataFrame(result.ops, columns=list(OPS_COLUMNS))
    title = f"{case.layer}/{case.impl} {case.label}"
    figures = case_figures(ops, result.memory, title, run_dir)
    out = _console()
    out.print(_ops_table(ops, top, title))
    self_ms = ops["self_cpu_us"].sum() / 1e3
    out.print(f"per call: {result.op_calls:,.0f} operators launched, {self_ms:.4g} ms of CPU "
              f"self time under the profiler, peak memory {result.peak_mem_bytes / 2**20:.4g} "
              "MiB beyond the inputs", markup=False, highlight=False)
    tb = run_dir / "tb"
    for line in (f"ops.csv: {run_dir / 'ops.csv'}",
                 f"figures: {', '.join(str(p) for p in figures)}",
                 f"TensorBoard: tensorboard --logdir {tb}  (PyTorch Profiler tab; needs "
                 "torch-tb-profiler)",
                 f"Perfetto: open {run_dir / 'trace.json'} at https://ui.perfetto.dev "
                 "(or chrome://tracing)"):
        out.print(line, markup=False, highlight=False)


def _ops_table(ops: Any, top: int, title: str) -> Table:
    """The top operators by self time, with their share and calls per call."""
    device_time = ops["self_device_us"].sum() > 0
    total = ops["self_cpu_us"].sum()
    table = Table(title=f"{title}: top operators by self time (per call)",
                  title_justify="left")
    columns = ["operator", "calls", "self CPU us", "%", "CPU total us"]
    columns += ["self device us", "device total us"] if device_time else []
    for column in columns:
        table.add_column(column, justify="left" if column == "operator" else "right")
    for _, r in ops.head(top).iterrows():
        cells = [r["op"], f"{r['calls']:.4g}", f"{r['self_cpu_us']:.4g}",
                 f"{100 * r['self_cpu_us'] / total:.1f}" if total > 0 else "",
                 f"{r['cpu_total_us']:.4g}"]
        cells += [f"{r['self_device_us']:.4g}", f"{r['device_total_us']:.4g}"] if device_time \
            else []
        table.add_row(*cells)
    return table


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
def report_command(run_dir: Path) -> None:
    """Build plots/, report.html and report.md of RUN_DIR from its files."""
    from reports.report import build_report

    try:
        paths = build_report(run_dir)
    except RunDataError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"{run_dir}: cannot write the report ({exc.strerror or exc})") from None
    for path in paths[:2]:
        click.echo(str(path))
    click.echo(f"{len(paths) - 2} figures in {run_dir / 'plots'}")


@cli.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--basis", default="auto", show_default=True,
              type=click.Choice(["auto", "absolute", "relative"]),
              help="absolute: seconds; relative: multiples of each run's eager builtin (runs "
                   "from different machines or devices); auto: relative when they differ.")
@click.option("--threshold", default=0.10, show_default=True, type=click.FloatRange(0),
              help="Smallest relative change reported (widened to 3x a case's noise).")
@click.option("--alpha", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Significance level of the one-sided Mann-Whitney U test.")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Directory for compare.{csv,md,html,png} (default: results/<time>-compare).")
def compare_command(runs: tuple[Path, ...], basis: str, threshold: float, alpha: float,
                    out: Path | None) -> None:
    """Compare RUN_B [RUN_C ...] with the baseline RUN_A; exit 1 on a regression."""
    from reports.compare import compare_runs
    from reports.compare_report import write_comparison

    try:
        comparison = compare_runs(list(runs), basis=basis, threshold=threshold, alpha=alpha)
    except RunDataError as exc:
        raise InputError(str(exc)) from None
    try:
        out_dir = out if out is not None else new_run_dir(Path("results"), "compare")
        paths = write_comparison(comparison, out_dir)
    except OSError as exc:
        raise InputError(f"cannot write the comparison ({exc.strerror or exc})") from None
    console = _console()
    counts = comparison.frame["verdict"].value_counts()
    console.print(f"basis: {comparison.basis}; " + ", ".join(
        f"{verdict} {n}" for verdict, n in counts.items()), markup=False)
    regressed = comparison.frame[comparison.frame["regression"]]
    for _, r in regressed.iterrows():
        console.print(f"REGRESSION {r['run_b']}: {r['layer']}/{r['impl']}+{r['compile']} "
                      f"{r['device']} {r['dtype']} {r['mode']} {r['case']}: {r['verdict']} "
                      f"(x{r['ratio']:.3g}) {r['note']}", markup=False)
    console.print(f"comparison: {paths[2]}", markup=False)
    sys.exit(EXIT_FAILURES if comparison.regressions else EXIT_OK)


@cli.command("check")
@click.option("--baseline", type=click.Path(path_type=Path), required=True,
              help="Baseline directory: a run plus noise.csv (write one with --save-baseline).")
@click.option("--save-baseline", is_flag=True,
              help="Measure the current code --repeats times (A/A) and write BASELINE.")
@click.option("--layer", "layers", multiple=True, help="Layers to check (default: the "
              "baseline's; with --save-baseline: all). Repeatable or comma-separated.")
@click.option("--preset", default="quick", show_default=True, help="Sizes, for --save-baseline.")
@click.option("--basis", default="auto", show_default=True,
              type=click.Choice(["auto", "relative", "absolute"]),
              help="relative: times as multiples of the same run's eager builtin (a baseline "
                   "from another machine works); absolute: seconds (same machine only); auto: "
                   "slower in both on the baseline's kind of machine, else relative.")
@click.option("--threshold", default=0.10, show_default=True, type=click.FloatRange(0),
              help="Smallest slowdown that fails, widened to 3x a case's A/A noise.")
@click.option("--alpha", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Significance level of the one-sided Mann-Whitney U test.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(2),
              help="A/A runs that measure each case's noise, for --save-baseline.")
@click.option("--remeasure", default=2, show_default=True, type=click.IntRange(0),
              help="Times a case flagged slower is measured again, alongside the baseline's "
                   "stored code; it fails only if slower than that code every time.")
@click.option("--min-time", "min_time_s", default=0.25, show_default=True, type=float,
              help="Seconds of timing samples per case, for --save-baseline.")
@click.option("--budget", "budget_s", default=2.0, show_default=True, type=float,
              help="Seconds a naive-loop case may take, for --save-baseline.")
@click.option("--trials", default=1, show_default=True, type=click.IntRange(1),
              help="Correctness trials per case, for --save-baseline.")
@click.option("--threads", default=0, type=click.IntRange(0),
              help="CPU threads, for --save-baseline (default: torch's); a check uses the "
                   "baseline's.")
@click.option("--out", default=Path("results"), show_default=True,
              type=click.Path(path_type=Path))
@click.option("--impl-file", "impl_files", multiple=True, type=click.Path(path_type=Path),
              help="Your implementations, for --save-baseline (recorded in the baseline: "
                   "a later check loads the same files).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def check_command(baseline: Path, save_baseline: bool, layers: tuple[str, ...], preset: str,
                  basis: str, threshold: float, alpha: float, repeats: int, remeasure: int,
                  min_time_s: float, budget_s: float, trials: int, threads: int, out: Path,
                  impl_files: tuple[Path, ...], quiet: bool) -> None:
    """Fail (exit 1) when the current code is slower or wrong compared with a baseline."""
    if impl_files and not save_baseline:
        raise InputError("--impl-file goes with --save-baseline (a check loads the files its "
                         "baseline recorded)")
    _load_impl_files(impl_files)
    names = [x.name for x in REGISTRY.layers()]
    chosen = _choose("layer", _split(layers), names, everything=tuple(names))
    if save_baseline:
        config = BenchConfig(layers=chosen or tuple(names), preset=_choose(
            "preset", (preset,), PRESET_NAMES)[0], timing=TimingConfig(min_time_s=min_time_s),
            budget_s=budget_s, trials=trials, threads=threads, out=out,
            impl_files=tuple(p.resolve() for p in impl_files),
            isolate=bool(impl_files))
        sys.exit(_save_baseline(baseline, config, repeats, quiet))
    sys.exit(_check(baseline, chosen, basis, threshold, alpha, remeasure, out, quiet))


def _measure(config: BenchConfig, cases: list[Case], run_dir: Path, quiet: bool) -> Path:
    """Run ``cases`` into a new run directory ``run_dir``, quietly; for ``check``."""
    if config.threads:
        torch.set_num_threads(config.threads)
    use_project_cache()
    console = _console(stderr=True)
    run_dir.mkdir(parents=True, exist_ok=False)
    writer, ceilings = _open_writer(config, run_dir, console)
    console.print(f"measuring {len(cases)} cases -> {run_dir}", markup=False)
    with ProgressBar(len(cases), console, enabled=not quiet) as bar:
        run(config, cases, [writer, bar], ceilings=ceilings)
    writer.close(interrupted=False)
    return run_dir


def _save_baseline(baseline: Path, config: BenchConfig, repeats: int, quiet: bool) -> int:
    """``repeats`` runs of the same plan: the first is the baseline, all give its noise."""
    from reports.check import NOISE_FILE, case_noise, save_code

    if baseline.exists() and any(baseline.iterdir()) and not (baseline / NOISE_FILE).is_file():
        raise InputError(f"--baseline {baseline}: exists and is not a baseline; not overwriting")
    cases = _plan(config)
    aa_dir = new_run_dir(config.out, "baseline-aa")
    # Measured elsewhere, then copied: a baseline kept in git stays untouched (its commit
    # clean, as recorded) until the runs are done, and a failed save leaves the old one.
    names = [baseline.name, *(f"{baseline.name}-repeat-{i + 1}" for i in range(1, repeats))]
    runs = [_measure(config, cases, aa_dir / name, quiet) for name in names]
    noise = case_noise(runs)
    baseline.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "samples.csv", "meta.json"):
        shutil.copyfile(runs[0] / name, baseline / name)
    noise.to_csv(baseline / NOISE_FILE, index=False)
    save_code(baseline, config.impl_files)
    frame, _ = load_run(baseline)
    click.echo(f"baseline: {baseline} ({len(frame)} cases; A/A runs in {aa_dir})")
    _print_noise(noise)
    failed = frame["status"].isin(["incorrect", "error"]).any()
    return EXIT_FAILURES if failed else EXIT_OK


def _check(baseline: Path, layers: tuple[str, ...], basis: str, threshold: float, alpha: float,
           remeasure: int, out: Path, quiet: bool) -> int:
    """Measure the baseline's cases now; compare; re-measure flags; write the verdict."""
    from reports.check import (
        confirm,
        flagged,
        gate,
        load_code,
        load_noise,
        same_machine_kind,
        summary_line,
    )
    from reports.compare_report import write_comparison

    try:
        load_noise(baseline, "relative")
        _, meta = load_run(baseline)
        config = config_from_dict(meta["config"])
    except (RunDataError, ValueError, KeyError) as exc:
        raise InputError(str(exc.args[0]) if exc.args else str(exc)) from None
    _load_impl_files(config.impl_files)
    if unknown := [name for name in layers if name not in config.layers]:
        raise InputError(f"--layer {', '.join(unknown)}: not in the baseline "
                         f"({', '.join(config.layers)})")
    config = dataclasses.replace(config, layers=layers or config.layers, out=out)
    cases = _plan(config)
    check_dir = new_run_dir(out, "check")
    current = _measure(config, cases, check_dir / "current", quiet)

    _, now = load_run(current)
    both = basis == "auto" and same_machine_kind(meta, now)

    def compare(run_dir: Path, against: Path = baseline) -> Any:
        try:
            return gate(against, run_dir, basis if basis != "auto" else
                        ("both" if both else "relative"), threshold, alpha, config.layers,
                        noise_of=baseline)
        except RunDataError as exc:
            raise InputError(str(exc)) from None

    comparison = compare(current)
    suspects = set(flagged(comparison))
    again: list[Any] = []
    against = ""
    if suspects and remeasure:
        wanted = {c for c in cases if c.key in suspects} | {c.baseline for c in cases
                                                             if c.key in suspects}
        subset = [c for c in cases if c in wanted]
        code, impl_files, why = load_code(baseline, check_dir / "baseline-code")
        if code is None:
            _console(stderr=True).print(f"re-measuring against the stored baseline only: {why}",
                                        markup=False)
        else:
            against = " against the baseline's code timed alongside"
        for i in range(remeasure):
            if code is None:
                again.append(compare(_measure(config, subset,
                                              check_dir / f"remeasure-{i + 1}", quiet)))
                continue
            # Paired: the baseline's code and the current code, each in a fresh process, one
            # after the other (which goes first alternates); a drift of the machine since the
            # baseline was recorded moves both alike.
            runs = {}
            for which in ("baseline", "remeasure")[:: 1 if i % 2 == 0 else -1]:
                tree, files = (code, impl_files) if which == "baseline" else (PROJECT_ROOT, ())
                runs[which] = _measure_code(tree, baseline, subset,
                                            check_dir / f"{which}-{i + 1}", quiet, files)
            again.append(compare(runs["remeasure"], against=runs["baseline"]))
    verdict = confirm(comparison, again, against)
    paths = write_comparison(verdict, check_dir)
    line = summary_line(verdict)
    summary = f"## layerbench check: {line}\n\n" + paths[1].read_text(encoding="utf-8")
    (check_dir / "check.md").write_text(summary, encoding="utf-8")
    if step_summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(summary.replace("](compare.png)", f"]({check_dir / 'compare.png'})") + "\n")
    console = _console()
    for _, r in verdict.frame[verdict.frame["regression"]].iterrows():
        console.print(f"REGRESSION {r['layer']}/{r['impl']}+{r['compile']} {r['device']} "
                      f"{r['dtype']} {r['mode']} {r['case']}: {r['verdict']} (x{r['ratio']:.3g})"
                      f" {r['note']}", markup=False)
    console.print(line, markup=False)
    console.print(f"details: {check_dir / 'check.md'}", markup=False)
    return EXIT_FAILURES if verdict.regressions else EXIT_OK


def _measure_code(tree: Path, baseline: Path, cases: list[Case], run_dir: Path, quiet: bool,
                  impl_files: tuple[Path, ...] = ()) -> Path:
    """Time ``cases`` with the code in ``tree`` (its own ``cli.py measure``, a fresh process)
    into the new run directory ``run_dir``, configured as ``baseline`` was (``impl_files``
    instead of its implementation files, when given)."""
    tree = tree.resolve()  # the process runs in it: a relative path would point elsewhere
    keys = run_dir.with_name(f"{run_dir.name}-keys.csv")
    with keys.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(KEY_COLUMNS)
        writer.writerows(c.key for c in cases)
    env = {**os.environ, "LAYERBENCH_CACHE_DIR": str(calibration.cache_dir().parent),
           "TORCHINDUCTOR_CACHE_DIR": str(use_project_cache())}
    command = [sys.executable, str(tree / "cli.py"), "measure", "--like", str(baseline.resolve()),
               "--keys", str(keys.resolve()), "--out", str(run_dir.resolve())]
    for file in impl_files:
        command += ["--impl-file", str(file.resolve())]
    proc = subprocess.run([*command, *(["--quiet"] if quiet else [])], cwd=tree, env=env,
                          check=False)
    if proc.returncode != 0:
        raise InputError(f"timing the code in {tree} failed (exit {proc.returncode}): "
                         f"{' '.join(command)}")
    _, meta = load_run(run_dir)
    root = (meta.get("machine") or {}).get("code_root")
    if root is None or Path(root).resolve() != tree.resolve():
        raise InputError(f"{run_dir}: timed the code in {root}, not {tree}")
    return run_dir


@cli.command("measure", hidden=True)
@click.option("--like", required=True, type=click.Path(path_type=Path, exists=True),
              help="The run (a baseline) whose configuration to use.")
@click.option("--keys", required=True, type=click.Path(path_type=Path, exists=True),
              help="CSV of case keys (layer, impl, compile, device, dtype, mode, case).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The new run directory.")
@click.option("--impl-file", "impl_files", multiple=True, type=click.Path(path_type=Path),
              help="Implementation files instead of LIKE's (the baseline's stored copies).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def measure_command(like: Path, keys: Path, out: Path, impl_files: tuple[Path, ...],
                    quiet: bool) -> None:
    """Time the cases in KEYS, configured as run LIKE was, with this copy's code.

    ``check`` runs it in the baseline's stored code and in the current code, one after the
    other, to confirm a flagged case against the baseline's code timed alongside. A check runs
    the baseline's own version of this command: keep its options stable.
    """
    try:
        config = config_from_dict(json.loads((like / "meta.json").read_text())["config"])
        with keys.open(newline="", encoding="utf-8") as f:
            wanted = {tuple(row[c] for c in KEY_COLUMNS) for row in csv.DictReader(f)}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"measure: {exc}") from None
    config = dataclasses.replace(config, impl_files=impl_files or config.impl_files)
    _load_impl_files(config.impl_files)
    config = dataclasses.replace(config, layers=tuple(
        name for name in config.layers if any(key[0] == name for key in wanted)))
    cases = [c for c in _plan(config) if c.key in wanted]
    if len(cases) != len(wanted):
        raise InputError(f"measure: {len(wanted) - len(cases)} case(s) of {keys} are not in "
                         f"this code's plan")
    _measure(config, cases, out, quiet)


@cli.command("noise")
@click.option("--baseline", type=click.Path(path_type=Path), required=True,
              help="The baseline whose noise.csv is rebuilt.")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
def noise_command(baseline: Path, runs: tuple[Path, ...]) -> None:
    """Re-estimate BASELINE's per-case noise from its run and more A/A RUNS of the same code.

    RUNS are run directories of the baseline's cases (e.g. the `current` runs of earlier checks
    of unchanged code, or runs made at other times of day): the more and the more spread out,
    the better the noise covers the states a case moves between.
    """
    from reports.check import NOISE_FILE, case_noise

    try:
        load_run(baseline)
        for run_dir in runs:
            load_run(run_dir)
        noise = case_noise([baseline, *runs])
    except RunDataError as exc:
        raise InputError(str(exc)) from None
    noise.to_csv(baseline / NOISE_FILE, index=False)
    click.echo(f"{baseline / NOISE_FILE}: {len(noise)} cases from {len(runs) + 1} runs")
    _print_noise(noise)


def _print_noise(noise: Any) -> None:
    for column in ("noise_abs", "noise_rel"):
        q = noise[column].quantile([0.5, 0.9, 1.0])
        click.echo(f"  run-to-run noise ({column}): median {q[0.5]:.1%}, 90th percentile "
                   f"{q[0.9]:.1%}, max {q[1.0]:.1%}")


@cli.command("calibrate")
@click.option("--device", "devices", multiple=True, default=("cpu",), show_default=True,
              help="cpu, cuda, cuda:N, mps or all (repeatable, or comma-separated).")
@click.option("--threads", default=0, type=click.IntRange(0),
              help="CPU threads (default: torch's default); ceilings are cached per count.")
@click.option("--force", is_flag=True, help="Measure again even when cached.")
def calibrate_command(devices: tuple[str, ...], threads: int, force: bool) -> None:
    """Measure and cache the device's ceilings: peak matmul FLOP/s per dtype, copy GB/s."""
    if threads:
        torch.set_num_threads(threads)
    for device in _devices(devices):
        cached = calibration.cache_path(device)
        measured = calibration.ceilings(device, force=force)
        click.echo(f"{device} ({measured['device_name']}, torch {measured['torch']}): "
                   f"{ceiling_text(measured)}")
        click.echo(f"  measured {measured['measured_at']} in {measured['measure_s']} s, "
                   f"cached in {cached}")
        if warning := calibration.busy_warning(measured):
            click.echo(f"  warning: {warning}")


def main() -> None:
    steady_malloc()  # before anything is measured: every command meets the same allocator
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:  # usage errors: one line, no usage banner
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()

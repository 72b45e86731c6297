"""Run sessions: what ``bench``, ``list`` and ``calibrate`` do, from options to an exit code.

A session checks the user's names and sizes (``UsageError``: exit 2, nothing written), plans the
cases, opens a run directory (``meta.json`` first), runs the cases into it with a progress bar,
prints the summary and builds the report. ``measure`` is the same run, quiet and without a
report, for the regression gate (``suites.baseline``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from impls import DTYPE_NAMES, MODES, REGISTRY
from reports.console import (
    ProgressBar,
    console,
    impl_table,
    load_lines,
    problems,
    say,
    summary_tables,
)
from reports.meta import ceiling_text
from reports.outcome import EXIT_INTERRUPTED, UsageError
from reports.record import Case, Samples
from reports.schema import (
    KEY_COLUMNS,
    TIMED,
    exit_code,
    load_run,
    load_samples,
    machine_key_of,
)
from reports.writer import RunWriter, new_run_dir, open_resumed
from suites import calibration, devices
from suites.compilation import PROJECT_ROOT, use_project_cache
from suites.config import (
    BenchConfig,
    BenchOptions,
    ExecutorOptions,
    RunOptions,
    config_from_dict,
)
from suites.environment import machine_info
from suites.executors import EXECUTORS, INSTALL, Executor, Local
from suites.interference import LoadWatch
from suites.resolve import (
    choose_devices,
    layer_names,
    load_impl_files,
    planned,
    resolve,
)
from suites.runner import execute_group, run


def bench(options: BenchOptions) -> int:
    """The ``bench`` command: run the suite (or finish ``options.resume``); the exit code."""
    if options.resume is not None:
        return resume(options.resume, options.run.quiet, options.report, options.executor)
    config = resolve(options)
    cases = planned(config)
    set_threads(config.threads)
    meta = new_meta(config, calibrated=options.executor.here)
    engine = open_executor(config, options.executor, local_machine(meta))
    what = config.layers[0] if len(config.layers) == 1 else "all"
    shard = f"shard{config.shard[0]}of{config.shard[1]}" if config.shard != (1, 1) else ""
    try:
        run_dir = new_run_dir(config.out, "-".join(filter(None, (what, *config.devices,
                                                                   shard))))
    except OSError as exc:
        engine.close()
        raise UsageError(f"--out {config.out}: cannot create the run directory "
                         f"({exc.strerror or exc})") from None
    writer = RunWriter(run_dir, _params(config), {**meta, "executor": engine.describe()},
                       machines=engine.machines)
    return run_cases(config, cases, writer, options.run.quiet, options.report, engine=engine)


def resume(run_dir: Path, quiet: bool, report: bool,
           executor: ExecutorOptions | None = None) -> int:
    """Run the cases of ``run_dir`` that have no result row yet, appending to its files (on
    ``executor``, by default here)."""
    executor = executor or ExecutorOptions()
    try:
        meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
        config = config_from_dict(meta["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--resume {run_dir}: no usable meta.json ({exc})") from None
    load_impl_files(config.impl_files)
    for name in config.devices:
        if executor.here and (problem := devices.device(name).problem()):
            raise UsageError(f"--resume {run_dir}: {problem}")
    cases = planned(config)
    meta, rows = open_resumed(run_dir, _params(config))
    done = {tuple(r[k] for k in KEY_COLUMNS): r for r in rows}
    todo = [c for c in cases if c.key not in done]
    set_threads(config.threads)
    fresh = new_meta(config, calibrated=executor.here, described=False)
    engine = open_executor(config, executor, local_machine({**meta, **fresh}))
    say(f"resuming {run_dir}: {len(rows)} of {len(cases)} cases already done", stderr=True)
    writer = RunWriter(run_dir, _params(config),
                       {**meta, **fresh, "executor": engine.describe()}, resumed=True,
                       machines=engine.machines)
    timed = [r for r in rows if r["status"] in TIMED]
    watch = LoadWatch(torch.get_num_threads(), config.timing.precision, timed=len(timed),
                      unstable=sum(r.get("stable") == "0" for r in timed),
                      disturbed=sum("interference:" in r.get("flags", "") for r in timed))
    return run_cases(config, todo, writer, quiet, report, _timed_samples(run_dir, cases, done),
                     watch, engine)


def _timed_samples(run_dir: Path, cases: list[Case],
                   done: dict[tuple[str, ...], dict[str, str]]) -> dict[Case, Samples]:
    """The samples of the cases an earlier part of a run timed (not paired with anything new)."""
    samples = load_samples(run_dir)
    by_key = {key: tuple(g["seconds"]) for key, g in samples.groupby(list(KEY_COLUMNS))}
    found = {}
    for case in cases:
        row = done.get(case.key)
        if row is not None and row["status"] in TIMED and case.key in by_key:
            found[case] = Samples(by_key[case.key], int(float(row["calls_per_sample"] or 1)))
    return found


def open_executor(config: BenchConfig, options: ExecutorOptions,
                  local: dict[str, dict[str, Any]]) -> Executor:
    """The executor ``options`` name, ready (connected, for Dask). ``local``: this machine's
    key -> record, for the local executor. ``UsageError`` for an unknown name, a missing
    optional engine (with its install line) or a scheduler that does not answer."""
    if options.name not in EXECUTORS:
        raise UsageError(f"unknown --executor {options.name!r} (choose from "
                         f"{', '.join(EXECUTORS)})")
    if options.here:
        return Local(config, execute_group, dict(local))
    try:
        from suites.dask_executor import Dask
    except ImportError as exc:
        raise UsageError(f"--executor dask needs Dask distributed ({exc.name or exc} is not "
                         f"installed): {INSTALL['dask']}") from None
    return Dask(config, options, execute_group)


def new_meta(config: BenchConfig, calibrated: bool = True,
             described: bool = True) -> dict[str, Any]:
    """What ``meta.json`` records of a run before it starts: this machine (the one that drives
    it) and, where its cases run here (``calibrated``), its devices' ceilings; with
    ``described``, also the command, the configuration and the implementations' order."""
    meta: dict[str, Any] = {"machine": machine_info(list(config.devices)),
                            "calibration": all_ceilings(config.devices) if calibrated else {}}
    if described:
        meta.update(command=sys.argv, config=dataclasses.asdict(config),
                    impl_order=REGISTRY.impl_order())
    return meta


def local_machine(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """This machine's ``machines.json`` entry (key -> record) from a run's ``meta.json``."""
    return {machine_key_of(meta): {**meta["machine"], "calibration": meta["calibration"]}}


def open_run(config: BenchConfig, run_dir: Path) -> RunWriter:
    """The writer of a new run on this machine in ``run_dir``, its ``meta.json`` written: the
    command, the configuration, the machine, the devices' ceilings and the implementations'
    order."""
    meta = new_meta(config)
    return RunWriter(run_dir, _params(config), meta, machines=local_machine(meta))


def run_cases(config: BenchConfig, cases: list[Case], writer: RunWriter, quiet: bool,
              report: bool, known: dict[Case, Samples] | None = None,
              watch: LoadWatch | None = None, engine: Executor | None = None) -> int:
    """Run ``cases`` into the writer's run directory; print the summary; the exit code."""
    use_project_cache()
    run_dir = writer.run_dir
    err = console(stderr=True)
    where = engine.describe().get("text", "") if engine is not None else ""
    say(f"layerbench: {len(cases)} cases -> {run_dir}"
        + (f" ({where})" if where else " (each size group in a worker process)"
           if config.isolate else ""), stderr=True)
    watch = watch or LoadWatch(torch.get_num_threads(), config.timing.precision)
    if not where and (warning := watch.warning_now()):  # this machine runs the cases
        say(f"warning: {warning}", stderr=True)
    try:
        with ProgressBar(len(cases), err, enabled=not quiet) as bar:
            run(config, cases, [writer, watch, bar], profile_root=writer.profile_dir,
                ceilings=writer.meta["calibration"], known=known, engine=engine)
    except KeyboardInterrupt:
        writer.close(interrupted=True, load=watch.summary())
        say(f"interrupted: the finished cases are in {run_dir / 'results.csv'}; "
            f"finish with `python cli.py bench --resume {run_dir}`", stderr=True)
        return EXIT_INTERRUPTED
    writer.close(interrupted=False, load=watch.summary())
    frame, meta = load_run(run_dir)
    out = console()
    for table in summary_tables(frame):
        out.print(table)
    for line in [*problems(frame), *load_lines(meta)]:
        say(line)
    say(f"results: {run_dir}")
    if report:
        _report(run_dir)
    return exit_code(frame)


def measure(config: BenchConfig, cases: list[Case], run_dir: Path, quiet: bool) -> Path:
    """Run ``cases`` into the new run directory ``run_dir``, without summary or report (the
    regression gate's runs)."""
    set_threads(config.threads)
    use_project_cache()
    run_dir.mkdir(parents=True, exist_ok=False)
    writer = open_run(config, run_dir)
    err = console(stderr=True)
    say(f"measuring {len(cases)} cases -> {run_dir}", stderr=True)
    watch = LoadWatch(torch.get_num_threads(), config.timing.precision)
    with ProgressBar(len(cases), err, enabled=not quiet) as bar:
        run(config, cases, [writer, watch, bar], ceilings=writer.meta["calibration"])
    writer.close(interrupted=False, load=watch.summary())
    return run_dir


def all_ceilings(names: Iterable[str]) -> dict[str, Any]:
    """Each device's cached ceilings; measured first (a few seconds) where none are cached."""
    found = {}
    for name in names:
        fresh = not calibration.cache_path(name).is_file()
        if fresh:
            say(f"calibrating {name} once (peak matmul FLOP/s, copy "
                "bandwidth) ...", stderr=True)
        found[name] = calibration.ceilings(name)
        if fresh and (warning := calibration.busy_warning(found[name])):
            say(f"warning: {warning}", stderr=True)
    return found


def calibrate(names: Iterable[str], threads: int, force: bool) -> int:
    """The ``calibrate`` command: measure (or show the cached) ceilings of each device."""
    set_threads(threads)
    for name in choose_devices(names):
        cached = calibration.cache_path(name)
        measured = calibration.ceilings(name, force=force)
        say(f"{name} ({measured['device_name']}, torch {measured['torch']}): "
            f"{ceiling_text(measured)}")
        say(f"  measured {measured['measured_at']} in {measured['measure_s']} s, "
            f"cached in {cached}")
        if warning := calibration.busy_warning(measured):
            say(f"  warning: {warning}")
    return 0


def list_implementations(layer: str | None, run: RunOptions) -> int:
    """The ``list`` command: layers, their implementations and what each supports."""
    load_impl_files(run.impl_files)
    layers = layer_names((layer,)) if layer is not None else layer_names(("all",))
    own = str(PROJECT_ROOT / "impls")
    rows = []
    for name in layers:
        spec = REGISTRY.layer(name)
        for impl in REGISTRY.impls(name):
            notes = " ".join(filter(None, (impl.description, impl.notes,
                                           "[naive loop: budgeted]" if impl.naive else "")))
            if not impl.source.startswith(own):
                notes += f" (from {impl.source})"
            rows.append({"layer": name, "impl": impl.name, "devices": sorted(impl.devices),
                         "dtypes": [n for n, d in DTYPE_NAMES.items() if d in impl.dtypes],
                         "modes": [m for m in MODES if m in impl.modes and m in spec.modes],
                         "compile": impl.compilable, "notes": notes})
    console().print(impl_table(rows))
    return 0


def _params(config: BenchConfig) -> list[str]:
    return [p for name in config.layers for p in REGISTRY.layer(name).params]


def set_threads(threads: int) -> None:
    """Run torch on ``threads`` CPU threads (0: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def _report(run_dir: Path) -> None:
    """Build the run's report; a failure here is reported but never loses the results."""
    from reports.report import build_report, contents

    try:
        paths = build_report(run_dir)
    except Exception as exc:  # the results are on disk: say so and keep the exit code
        say(f"report failed ({type(exc).__name__}: {exc}); retry with "
            f"`python cli.py report {run_dir}`")
        return
    say(f"report: {paths[0]} ({contents(paths)})")

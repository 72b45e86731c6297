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

from impls import DTYPE_NAMES, MODES, REGISTRY, RegistryError
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
from suites.cases import families, plan
from suites.compilation import COMPILE_MODES, PROJECT_ROOT, use_project_cache
from suites.config import (
    BenchConfig,
    BenchOptions,
    ExecutorOptions,
    RunOptions,
    TimingConfig,
    config_from_dict,
)
from suites.environment import machine_info
from suites.executors import Executor, open_executor
from suites.interference import LoadWatch
from suites.presets import PRESET_NAMES, notes_size, parse_size
from suites.runner import execute_group, run


def load_impl_files(paths: Iterable[Path]) -> None:
    """Register the implementations of the user's files (``--impl-file``); a file that does not
    import, or calls ``sys.exit`` as it does, is bad input (``UsageError``)."""
    for path in paths:
        try:
            REGISTRY.load_file(path)
        except RegistryError as exc:
            raise UsageError(str(exc)) from None
        except SystemExit as exc:
            raise UsageError(f"--impl-file {path} does not import: it called "
                             f"sys.exit({exc.code!r})") from None


def choose(option: str, values: Iterable[str], choices: Iterable[str],
           everything: Iterable[str] | None = None) -> tuple[str, ...]:
    """``values`` checked against ``choices``; ``all`` means ``everything`` where allowed."""
    values, choices = tuple(values), tuple(choices)
    if everything is not None and "all" in values:
        return tuple(everything)
    for value in values:
        if value not in choices:
            also = ("all",) if everything is not None else ()
            raise UsageError(f"unknown {option} {value!r} (choose from "
                             f"{', '.join(choices + also)})")
    return values


def choose_devices(names: Iterable[str], here: bool = True) -> tuple[str, ...]:
    """``--device`` values, each present here (``all``: every kind that is); with ``here``
    False (the cases run on other machines), each a known device name."""
    names = tuple(names)
    if "all" in names:
        if not here:
            raise UsageError("--device all means the devices of this machine: name the "
                             "devices the cluster's workers should run (e.g. cpu,cuda)")
        return tuple(devices.available())
    for name in names:
        try:
            problem = devices.device(name).problem()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if problem and here:
            raise UsageError(problem)
    return names


def layer_names(chosen: Iterable[str]) -> tuple[str, ...]:
    """Registered layer names (``all``: every layer, in the notes' order)."""
    names = [layer.name for layer in REGISTRY.layers()]
    return choose("layer", chosen, names, everything=names)


def custom_size(layer: str, text: str) -> dict[str, int]:
    """``--size k=v,...`` on top of the notes' size of ``layer``, checked."""
    spec = REGISTRY.layer(layer)
    try:
        size = parse_size(text, notes_size(layer), spec)
        spec.check(size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return size


def resolve(options: BenchOptions) -> BenchConfig:
    """The run ``options`` ask for, every name checked and ``all`` expanded."""
    load_impl_files(options.run.impl_files)
    if options.layer is None:
        raise UsageError("missing LAYER (a layer name or all; or --resume RUN_DIR)")
    layers = layer_names((options.layer,))
    size: tuple[tuple[str, int], ...] = ()
    if options.size is not None:
        if len(layers) != 1:
            raise UsageError("--size needs a single layer, not 'all'")
        size = tuple(custom_size(layers[0], options.size).items())
    compile_modes = choose("compile mode", options.compile_modes, COMPILE_MODES)
    here = options.executor.name == "local"
    return BenchConfig(
        layers=layers, impls=options.impls, devices=choose_devices(options.devices, here),
        dtypes=choose("dtype", options.dtypes, DTYPE_NAMES, everything=DTYPE_NAMES),
        modes=choose("mode", options.modes, MODES, everything=MODES),
        compile_modes=compile_modes, preset=choose("preset", (options.preset,), PRESET_NAMES)[0],
        size=size, budget_s=options.budget_s, trials=options.trials, seed=options.seed,
        threads=options.run.threads, profile=options.profile,
        timing=timing_config(options.min_time_s, options.max_time_s, options.precision,
                             options.cuda_graph),
        out=options.run.out,
        impl_files=options.run.impl_files, timeout_s=options.timeout_s,
        isolate=options.isolate if options.isolate is not None else bool(
            options.run.impl_files or set(compile_modes) - {"none"}),
        shard=parse_shard(options.shard))


def parse_shard(text: str | None) -> tuple[int, int]:
    """``--shard K/N`` as ``(K, N)`` with 1 <= K <= N (None: the whole run, ``(1, 1)``)."""
    if text is None:
        return (1, 1)
    k, slash, n = text.partition("/")
    if not (slash and k.strip().isdigit() and n.strip().isdigit()):
        raise UsageError(f"--shard {text!r}: give K/N, the K-th of N shards, e.g. 1/4")
    index, count = int(k), int(n)
    if not 1 <= index <= count:
        raise UsageError(f"--shard {text}: K must be between 1 and N ({count}); shards count "
                         "from 1")
    return (index, count)


def timing_config(min_time_s: float, max_time_s: float, precision: float,
                  cuda_graph: bool = False) -> TimingConfig:
    """The timing options, checked (``UsageError``: a cap below the minimum, a precision that
    is not a fraction between 0 and 1)."""
    if not 0 < precision < 1:
        raise UsageError(f"--precision {precision:g}: give a fraction between 0 and 1, e.g. "
                         "0.02 for +-2%")
    if min_time_s < 0 or max_time_s < max(min_time_s, 1e-3):
        raise UsageError(f"--max-time {max_time_s:g} s: the cap must be at least --min-time "
                         f"({min_time_s:g} s)")
    return TimingConfig(min_time_s=min_time_s, max_time_s=max_time_s, precision=precision,
                        cuda_graph=cuda_graph)


def planned(config: BenchConfig) -> list[Case]:
    """Every case of ``config``; an unknown implementation, a nonsense size or an empty shard
    is bad input."""
    try:
        cases = plan(config)
    except (KeyError, ValueError) as exc:
        raise UsageError(str(exc.args[0]) if exc.args else str(exc)) from None
    if not cases and config.shard != (1, 1):
        whole = len(families(plan(dataclasses.replace(config, shard=(1, 1)))))
        raise UsageError(f"--shard {'/'.join(map(str, config.shard))}: an empty shard (this "
                         f"run has {whole} size families to share out; use N <= {whole})")
    return cases


def bench(options: BenchOptions) -> int:
    """The ``bench`` command: run the suite (or finish ``options.resume``); the exit code."""
    if options.resume is not None:
        return resume(options.resume, options.run.quiet, options.report, options.executor)
    config = resolve(options)
    cases = planned(config)
    set_threads(config.threads)
    here = options.executor.name == "local"
    meta = new_meta(config, calibrated=here)
    engine = open_executor(config, options.executor, execute_group, local_machine(meta))
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
    here = executor.name == "local"
    try:
        meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
        config = config_from_dict(meta["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--resume {run_dir}: no usable meta.json ({exc})") from None
    load_impl_files(config.impl_files)
    for name in config.devices:
        if (problem := devices.device(name).problem()) and here:
            raise UsageError(f"--resume {run_dir}: {problem}")
    cases = planned(config)
    meta, rows = open_resumed(run_dir, _params(config))
    done = {tuple(r[k] for k in KEY_COLUMNS): r for r in rows}
    todo = [c for c in cases if c.key not in done]
    set_threads(config.threads)
    fresh = new_meta(config, calibrated=here, described=False)
    engine = open_executor(config, executor, execute_group, local_machine({**meta, **fresh}))
    say(f"resuming {run_dir}: {len(rows)} of {len(cases)} cases already done", stderr=True)
    writer = RunWriter(run_dir, _params(config), {**meta, **fresh}, resumed=True,
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
    if warning := watch.warning_now():
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

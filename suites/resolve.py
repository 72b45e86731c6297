"""What a user typed, checked: names against the registry and the devices here, ``all``
expanded, sizes, timing options and shards parsed, into the ``BenchConfig`` of a run and its
planned cases. Anything wrong is bad input (``UsageError``) before anything runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from impls import DTYPE_NAMES, MODES, REGISTRY, RegistryError
from reports.outcome import UsageError
from reports.record import Case
from suites import devices
from suites.cases import families, plan
from suites.compilation import COMPILE_MODES
from suites.config import BenchConfig, BenchOptions, TimingConfig
from suites.presets import PRESET_NAMES, notes_size, parse_size


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
    return BenchConfig(
        layers=layers, impls=options.impls,
        devices=choose_devices(options.devices, options.executor.here),
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

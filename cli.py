"""layerbench command line: ``python cli.py bench conv --device cuda``.

Thin on purpose: options become a frozen ``BenchConfig``, then one function per command runs.
Exit codes: 0 success; 1 a wrong implementation or an error; 2 bad usage or input (one line on
stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from impls import DTYPE_NAMES, MODES, REGISTRY
from reports.console import ProgressBar, problems, summary_tables
from reports.schema import load_run
from reports.writer import RunWriter, new_run_dir
from suites.cases import Case, plan
from suites.compilation import COMPILE_MODES, use_project_cache
from suites.config import BenchConfig, TimingConfig
from suites.environment import available_devices, device_problem, machine_info
from suites.presets import PRESET_NAMES, notes_size, parse_size
from suites.runner import run

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
@click.argument("layer")
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
def bench_command(layer: str, devices: tuple[str, ...], dtypes: tuple[str, ...],
                  modes: tuple[str, ...], impls: tuple[str, ...],
                  compile_modes: tuple[str, ...], preset: str, size: str | None,
                  budget_s: float, min_time_s: float, trials: int, threads: int, seed: int,
                  profile: bool, out: Path, impl_files: tuple[Path, ...], quiet: bool) -> None:
    """Run LAYER's suite (or `all`) and write results/<run-id>/."""
    _load_impl_files(impl_files)
    layer_names = [x.name for x in REGISTRY.layers()]
    layers = _choose("layer", (layer,), layer_names, everything=tuple(layer_names))
    devices = _choose("device", _split(devices),
                      ("cpu", "cuda", "mps", *(d for d in _split(devices)
                                               if d.startswith("cuda:"))),
                      everything=tuple(available_devices()))
    for device in devices:
        if problem := device_problem(device):
            raise InputError(problem)
    custom: tuple[tuple[str, int], ...] = ()
    if size is not None:
        if len(layers) != 1:
            raise InputError("--size needs a single layer, not 'all'")
        try:
            custom = tuple(parse_size(size, notes_size(layers[0])).items())
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
        impl_files=impl_files,
    )
    try:
        cases = plan(config)
    except (KeyError, ValueError) as exc:
        raise InputError(str(exc.args[0]) if exc.args else str(exc)) from None
    sys.exit(_run_bench(config, cases, quiet))


def _run_bench(config: BenchConfig, cases: list[Case], quiet: bool) -> int:
    """Run the planned cases into a new run directory; print the summary; return the exit code."""
    if config.threads:
        torch.set_num_threads(config.threads)
    use_project_cache()
    params = [p for name in config.layers for p in REGISTRY.layer(name).params]
    try:
        what = config.layers[0] if len(config.layers) == 1 else "all"
        run_dir = new_run_dir(config.out, "-".join((what, *config.devices)))
    except OSError as exc:
        raise InputError(f"--out {config.out}: cannot create the run directory "
                         f"({exc.strerror or exc})") from None
    meta = {"command": sys.argv, "config": dataclasses.asdict(config),
            "machine": machine_info(list(config.devices)), "calibration": None}
    writer = RunWriter(run_dir, params, meta)
    console = _console(stderr=True)
    console.print(f"layerbench: {len(cases)} cases -> {run_dir}")
    try:
        with ProgressBar(len(cases), console, enabled=not quiet) as bar:
            run(config, cases, [writer, bar], profile_root=writer.profile_dir)
    except KeyboardInterrupt:
        writer.close(interrupted=True)
        console.print(f"interrupted: the finished cases are in {run_dir / 'results.csv'}")
        return EXIT_INTERRUPTED
    writer.close(interrupted=False)
    frame, _ = load_run(run_dir)
    out = _console()
    for table in summary_tables(frame):
        out.print(table)
    for line in problems(frame):
        out.print(line, markup=False, highlight=False)
    out.print(f"results: {run_dir}")
    failed = frame["status"].isin(["incorrect", "error"]).any()
    return EXIT_FAILURES if failed else EXIT_OK


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:  # usage errors: one line, no usage banner
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()

"""layerbench command line: ``python cli.py bench conv --device cuda``. Each command declares its
options (shared ones once, below), builds a frozen options object and makes one call into
``suites`` or ``reports``, which return the exit code (``reports.outcome``): 0 success; 1 a wrong
implementation, an error or a regression; 2 bad usage or input (one line on stderr); 130
interrupted."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from reports.merge import merge

from impls import DTYPE_NAMES, MODES
from reports.check import rebuild_noise
from reports.compare_report import compare
from reports.outcome import EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from reports.report import report
from suites.baseline import check, measure_like
from suites.compilation import COMPILE_MODES
from suites.config import BenchOptions, CheckOptions, ExecutorOptions, ProfileOptions, RunOptions
from suites.profile_run import profile
from suites.session import bench, calibrate, list_implementations
from suites.timing import steady_malloc

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# Every option used by more than one command, declared once; a command may change the default
# and help (``option("--min-time", default=0.25)``).
OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "--device": (("devices",), dict(multiple=True, default=("cpu",), show_default=True,
                 help="cpu, cuda, cuda:N, mps or all (repeatable, or comma-separated).")),
    "--dtype": (("dtypes",), dict(multiple=True, default=("float32",), show_default=True,
                help=f"{', '.join(DTYPE_NAMES)} or all.")),
    "--mode": (("modes",), dict(multiple=True, default=("fwd",), show_default=True,
               help="fwd (forward, no grad), fwdbwd (forward + backward), train (one SGD "
                    "step, layers that offer it) or all.")),
    "--compile": (("compile_modes",), dict(multiple=True, default=("none",), show_default=True,
                  help=f"torch.compile modes: {', '.join(COMPILE_MODES)}.")),
    "--size": ((), dict(default=None, help="One custom size, e.g. N=8,C_in=3 (the rest from "
                                          "the notes' configuration).")),
    "--budget": (("budget_s",), dict(default=10.0, show_default=True, type=float,
                 help="Seconds a naive-loop case may take; predicted longer means skipped.")),
    "--min-time": (("min_time_s",), dict(default=0.25, show_default=True,
                   type=click.FloatRange(0), help="Seconds of timing samples per case, at "
                                                  "least.")),
    "--max-time": (("max_time_s",), dict(default=1.0, show_default=True,
                   type=click.FloatRange(0, min_open=True),
                   help="Seconds of timing samples per case, at most: the cap when the "
                        "--precision target is not reached.")),
    "--precision": ((), dict(default=0.02, show_default=True,
                    type=click.FloatRange(0, 1, min_open=True, max_open=True),
                    help="Sample until a case's median and its speed against the builtin are "
                         "known to +- this fraction (95% intervals), or --max-time.")),
    "--trials": ((), dict(default=3, show_default=True, type=click.IntRange(1),
                 help="Correctness trials (fresh random inputs each).")),
    "--threads": ((), dict(default=0, type=click.IntRange(0),
                  help="CPU threads (default: torch's default).")),
    "--seed": ((), dict(default=0, show_default=True, type=int)),
    "--out": ((), dict(default=Path("results"), show_default=True,
              type=click.Path(path_type=Path))),
    "--impl-file": (("impl_files",), dict(multiple=True, type=click.Path(path_type=Path),
                    help="Python file registering your own implementations (repeatable).")),
    "--quiet": ((), dict(is_flag=True, help="No progress bar.")),
    "--basis": ((), dict(default="auto", show_default=True,
                type=click.Choice(["auto", "absolute", "relative"]),
                help="absolute: seconds; relative: multiples of each run's eager builtin (runs "
                     "from different machines or devices); auto: relative when they differ.")),
    "--threshold": ((), dict(default=0.10, show_default=True, type=click.FloatRange(0),
                    help="Smallest relative change reported (widened to 3x a case's noise).")),
    "--alpha": ((), dict(default=0.01, show_default=True, type=click.FloatRange(0, 1),
                help="Significance level of the one-sided Mann-Whitney U test.")),
}


def option(flag: str, name: str | None = None, **overrides: Any) -> Decorator:
    """The shared option ``flag``, ``overrides`` applied (``name``: the parameter it fills)."""
    names, declared = OPTIONS[flag]
    return click.option(flag, *((name,) if name else names), **{**declared, **overrides})


def options(*flags: str, overrides: dict[str, dict[str, Any]] | None = None) -> Decorator:
    """Several shared options at once, in the order given (``overrides``: per flag)."""
    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for flag in reversed(flags):
            fn = option(flag, **(overrides or {}).get(flag, {}))(fn)
        return fn
    return apply


def split(values: Iterable[str]) -> tuple[str, ...]:
    """``("a,b", "c")`` -> ``("a", "b", "c")``: options accept repeats and comma lists."""
    return tuple(dict.fromkeys(v.strip() for value in values for v in value.split(",")
                               if v.strip()))


def run_options(kwargs: dict[str, Any]) -> RunOptions:
    """The shared run options, taken out of a command's keyword arguments."""
    return RunOptions(out=kwargs.pop("out", Path("results")),
                      impl_files=tuple(kwargs.pop("impl_files", ())),
                      quiet=kwargs.pop("quiet", False), threads=kwargs.pop("threads", 0))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Benchmark and check hand-written layer implementations against the PyTorch built-ins."""


@cli.command("list")
@click.argument("layer", required=False)
@option("--impl-file")
def list_command(layer: str | None, impl_files: tuple[Path, ...]) -> None:
    """Layers, their implementations, and what each supports."""
    sys.exit(list_implementations(layer, RunOptions(impl_files=impl_files)))


@cli.command("bench")
@click.argument("layer", required=False)
@options("--device", "--dtype", "--mode")
@click.option("--impl", "impls", multiple=True, help="Implementations to run (default: all).")
@option("--compile")
@click.option("--preset", default="default", show_default=True, help="Sizes: quick, default, full.")
@options("--size", "--budget", "--min-time", "--max-time", "--precision", "--trials",
         "--threads", "--seed")
@click.option("--cuda-graph", is_flag=True, help="CUDA: time replays of each call captured in "
              "a CUDA graph (no launch costs; an L2 flush before each). Not on the CPU.")
@click.option("--profile", is_flag=True, help="Also profile each case (traces and ops.csv).")
@options("--out", "--impl-file", "--quiet")
@click.option("--no-report", "report", is_flag=True, flag_value=False, default=True,
              help="Skip the plots and report.html/report.md.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Seconds one case may take in all (checks, compile, timing); beyond it the "
                   "case is a `timeout` row. Hard (the worker is killed) with --isolate.")
@click.option("--isolate/--no-isolate", default=None,
              help="Run each case in a worker process: a hard --timeout, and a crash costs one "
                   "case, not the run. Default: on with --impl-file or torch.compile.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Finish an interrupted run in RUN_DIR: its remaining cases, configured as its "
                   "meta.json records (options other than --executor are ignored).")
@click.option("--shard", help="K/N: only the K-th of N shares of the sizes (a SLURM array, a CI "
              "matrix); join the shards' runs with `merge`.")
@click.option("--executor", "name", default="local", show_default=True, help="Where cases run: "
              "local, or dask (a Dask cluster: docs/scale-out.md).")
@click.option("--scheduler", "address", help="Dask scheduler address, e.g. tcp://host:8786 "
              "(default: a local cluster on 127.0.0.1).")
@click.option("--dashboard", is_flag=True, help="Dask: serve the local cluster's dashboard.")
def bench_command(**kwargs: Any) -> None:
    """Run LAYER's suite (or `all`) and write results/<run-id>/."""
    run = run_options(kwargs)
    lists = {k: split(kwargs.pop(k)) for k in ("devices", "dtypes", "modes", "impls",
                                               "compile_modes")}
    executor = ExecutorOptions(**{k: kwargs.pop(k) for k in ("name", "address", "dashboard")})
    sys.exit(bench(BenchOptions(run=run, executor=executor, **lists, **kwargs)))


@cli.command("profile")
@click.argument("layer")
@click.option("--impl", required=True, help="The implementation to profile.")
@option("--size", help="k=v,... on top of the notes' size (default: the notes' size; for a "
                       "naive loop too slow there, its calibration size).")
@option("--device", "device", multiple=False, default="cpu", help="cpu, cuda, cuda:N or mps.")
@option("--dtype", "dtype", multiple=False, default="float32", help=", ".join(DTYPE_NAMES))
@option("--mode", "mode", multiple=False, default="fwd", help=", ".join(MODES))
@option("--compile", "compile_mode", multiple=False, default="none",
        help=f"torch.compile mode: {', '.join(COMPILE_MODES)}.")
@click.option("--wait", default=None, type=click.IntRange(0),
              help="Calls before recording (default 1; naive loops 0).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0),
              help="Calls recorded, then dropped.")
@click.option("--active", default=None, type=click.IntRange(1),
              help="Calls recorded and averaged (default 3; naive loops 1).")
@click.option("--stacks", is_flag=True, help="Record Python stacks (TensorBoard's stack view).")
@option("--budget", default=60.0,
        help="Seconds the profiled calls of a naive loop may take (predicted).")
@options("--threads", "--seed")
@click.option("--top", default=15, show_default=True, type=click.IntRange(1),
              help="Operators in the printed table.")
@options("--out", "--impl-file")
def profile_command(**kwargs: Any) -> None:
    """Run one case of LAYER under torch.profiler: operator table, traces, ops.csv, figures."""
    run = run_options(kwargs)
    sys.exit(profile(ProfileOptions(run=run, **kwargs)))


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
def report_command(run_dir: Path) -> None:
    """Build plots/, report.html and report.md of RUN_DIR from its files."""
    sys.exit(report(run_dir))


@cli.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@options("--basis", "--threshold", "--alpha")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Directory for compare.{csv,md,html,png} (default: results/<time>-compare).")
def compare_command(runs: tuple[Path, ...], **kwargs: Any) -> None:
    """Compare RUN_B [RUN_C ...] with the baseline RUN_A; exit 1 on a regression."""
    sys.exit(compare(list(runs), **kwargs))


@cli.command("merge")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@option("--out", default=None, required=True, show_default=False,
        help="The merged run directory (must not exist yet).")
def merge_command(runs: tuple[Path, ...], out: Path) -> None:
    """Join the runs of one sweep's shards (`bench --shard K/N`) into one run directory."""
    sys.exit(merge(list(runs), out))


@cli.command("check")
@click.option("--baseline", type=click.Path(path_type=Path), required=True,
              help="Baseline directory: a run plus noise.csv (write one with --save-baseline).")
@click.option("--save-baseline", is_flag=True,
              help="Measure the current code --repeats times (A/A) and write BASELINE.")
@click.option("--layer", "layers", multiple=True, help="Layers to check (default: the "
              "baseline's; with --save-baseline: all). Repeatable or comma-separated.")
@click.option("--preset", default="quick", show_default=True, help="Sizes, for --save-baseline.")
@option("--basis", type=click.Choice(["auto", "relative", "absolute"]),
        help="relative: times as multiples of the same run's eager builtin (a baseline from "
             "another machine works); absolute: seconds (same machine only); auto: slower in "
             "both on the baseline's kind of machine, else relative.")
@option("--threshold", help="Smallest slowdown that fails, widened to 3x a case's A/A noise.")
@option("--alpha")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(2),
              help="A/A runs that measure each case's noise, for --save-baseline.")
@click.option("--remeasure", default=2, show_default=True, type=click.IntRange(0),
              help="Times a case flagged slower is measured again, alongside the baseline's "
                   "stored code; it fails only if slower than that code every time.")
@options("--min-time", "--max-time", "--precision", "--budget", "--trials",  # --save-baseline's
         overrides={"--budget": dict(default=2.0), "--trials": dict(default=1)})
@option("--threads", help="CPU threads, for --save-baseline (default: torch's); a check uses "
                          "the baseline's.")
@option("--out")
@option("--impl-file", help="Your implementations, for --save-baseline (recorded in the "
                            "baseline: a later check loads the same files).")
@option("--quiet")
def check_command(**kwargs: Any) -> None:
    """Fail (exit 1) when the current code is slower or wrong compared with a baseline."""
    run = run_options(kwargs)
    layers = split(kwargs.pop("layers"))
    sys.exit(check(CheckOptions(run=run, layers=layers, **kwargs)))


@cli.command("measure", hidden=True)
@click.option("--like", required=True, type=click.Path(path_type=Path, exists=True),
              help="The run (a baseline) whose configuration to use.")
@click.option("--keys", required=True, type=click.Path(path_type=Path, exists=True),
              help="CSV of case keys (layer, impl, compile, device, dtype, mode, case).")
@option("--out", default=None, required=True, show_default=False, help="The new run directory.")
@option("--impl-file", help="Implementation files instead of LIKE's (the baseline's stored "
                            "copies).")
@option("--quiet")
def measure_command(like: Path, keys: Path, **kwargs: Any) -> None:
    """Time the cases in KEYS, configured as run LIKE was, with this copy's code (``check``
    runs the baseline's own copy of this command too: keep its options stable)."""
    run = run_options(kwargs)
    sys.exit(measure_like(like, keys, run.out, run))


@cli.command("noise")
@click.option("--baseline", type=click.Path(path_type=Path), required=True,
              help="The baseline whose noise.csv is rebuilt.")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
def noise_command(baseline: Path, runs: tuple[Path, ...]) -> None:
    """Re-estimate BASELINE's per-case noise from its run and more A/A RUNS of its cases (e.g.
    earlier checks' `current` runs of unchanged code, made at other times of day)."""
    sys.exit(rebuild_noise(baseline, list(runs)))


@cli.command("calibrate")
@option("--device")
@option("--threads", help="CPU threads (default: torch's default); ceilings are cached per "
                          "count.")
@click.option("--force", is_flag=True, help="Measure again even when cached.")
def calibrate_command(devices: tuple[str, ...], threads: int, force: bool) -> None:
    """Measure and cache the device's ceilings: peak matmul FLOP/s per dtype, copy GB/s."""
    sys.exit(calibrate(split(devices), threads, force))


def main(args: list[str] | None = None) -> None:
    """Run the command line (``args``: instead of ``sys.argv[1:]``); every bad input ends here
    as one line and exit code 2."""
    steady_malloc()  # before anything is measured: every command meets the same allocator
    try:
        cli.main(args=args, prog_name="cli.py", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except (click.ClickException, UsageError) as exc:  # one line, no usage banner
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()

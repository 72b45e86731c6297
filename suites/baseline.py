"""The regression gate's sessions: record a baseline (A/A runs and the code they timed), check
the current code against it, and time cases with a stored copy of the code.

``check`` measures the baseline's cases now and compares (``reports.check.gate``). A case found
slower is measured again ``remeasure`` times, each round timing the baseline's stored code and
the current code one after the other, each in a fresh process (``measure_code``: that code's own
``cli.py measure``), so a machine that drifted since the baseline was recorded moves both alike;
it fails only if slower than the stored code in every round (``reports.check.confirm``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from reports.check import (
    NOISE_FILE,
    case_noise,
    confirm,
    flagged,
    gate,
    load_noise,
    noise_lines,
    same_machine_kind,
    summary_line,
)
from reports.compare import Comparison
from reports.compare_report import regression_lines, write_comparison
from reports.console import say
from reports.outcome import EXIT_FAILED, EXIT_OK, UsageError
from reports.record import Case
from reports.schema import KEY_COLUMNS, exit_code, load_run
from reports.writer import new_run_dir
from suites import calibration
from suites.compilation import PROJECT_ROOT, use_project_cache
from suites.config import BenchConfig, CheckOptions, RunOptions, config_from_dict
from suites.presets import PRESET_NAMES
from suites.resolve import choose, layer_names, load_impl_files, planned, timing_config
from suites.session import measure

CODE_FILE = "code.tar.gz"  # the code the baseline timed: the project's packages + impl files
CODE_PARTS = ("cli.py", "impls", "suites", "reports")


def check(options: CheckOptions) -> int:
    """The ``check`` command: record a baseline, or gate the current code against one."""
    run = options.run
    if run.impl_files and not options.save_baseline:
        raise UsageError("--impl-file goes with --save-baseline (a check loads the files its "
                         "baseline recorded)")
    load_impl_files(run.impl_files)
    chosen = layer_names(options.layers) if options.layers else ()
    if options.save_baseline:
        config = BenchConfig(
            layers=chosen or layer_names(("all",)),
            preset=choose("preset", (options.preset,), PRESET_NAMES)[0],
            timing=timing_config(options.min_time_s, options.max_time_s, options.precision),
            budget_s=options.budget_s,
            trials=options.trials, threads=run.threads, out=run.out,
            impl_files=tuple(p.resolve() for p in run.impl_files), isolate=bool(run.impl_files))
        return save_baseline(options.baseline, config, options.repeats, run.quiet)
    return check_against(options, chosen)


def save_baseline(baseline: Path, config: BenchConfig, repeats: int, quiet: bool) -> int:
    """``repeats`` runs of the same plan: the first is the baseline, all give its noise."""
    if baseline.exists() and any(baseline.iterdir()) and not (baseline / NOISE_FILE).is_file():
        raise UsageError(f"--baseline {baseline}: exists and is not a baseline; not "
                         "overwriting")
    cases = planned(config)
    aa_dir = new_run_dir(config.out, "baseline-aa")
    # Measured elsewhere, then copied: a baseline kept in git stays untouched (its commit
    # clean, as recorded) until the runs are done, and a failed save leaves the old one.
    names = [baseline.name, *(f"{baseline.name}-repeat-{i + 1}" for i in range(1, repeats))]
    runs = [measure(config, cases, aa_dir / name, quiet) for name in names]
    noise = case_noise(runs)
    baseline.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "samples.csv", "meta.json"):
        shutil.copyfile(runs[0] / name, baseline / name)
    noise.to_csv(baseline / NOISE_FILE, index=False)
    save_code(baseline, config.impl_files)
    frame, _ = load_run(baseline)
    say(f"baseline: {baseline} ({len(frame)} cases; A/A runs in {aa_dir})")
    for line in noise_lines(noise):
        say(line)
    return exit_code(frame)


def check_against(options: CheckOptions, layers: tuple[str, ...]) -> int:
    """Measure the baseline's cases now; compare; re-measure flags; write the verdict."""
    baseline = options.baseline
    load_noise(baseline, "relative")
    _, meta = load_run(baseline)
    config = _recorded_config(meta, baseline)
    load_impl_files(config.impl_files)
    if unknown := [name for name in layers if name not in config.layers]:
        raise UsageError(f"--layer {', '.join(unknown)}: not in the baseline "
                         f"({', '.join(config.layers)})")
    config = dataclasses.replace(config, layers=layers or config.layers, out=options.run.out)
    cases = planned(config)
    check_dir = new_run_dir(options.run.out, "check")
    current = measure(config, cases, check_dir / "current", options.run.quiet)
    _, now = load_run(current)
    basis = options.basis
    if basis == "auto":
        basis = "both" if same_machine_kind(meta, now) else "relative"

    def compare(run_dir: Path, against: Path = baseline) -> Comparison:
        return gate(against, run_dir, basis, options.threshold, options.alpha, config.layers,
                    noise_of=baseline)

    comparison = compare(current)
    suspects = set(flagged(comparison))
    again: list[Comparison] = []
    against = ""
    if suspects and options.remeasure:
        wanted = {c for c in cases if c.key in suspects} | {c.baseline for c in cases
                                                             if c.key in suspects}
        subset = [c for c in cases if c in wanted]
        code, impl_files, why = load_code(baseline, check_dir / "baseline-code")
        if code is None:
            say(f"re-measuring against the stored baseline only: {why}", stderr=True)
        else:
            against = " against the baseline's code timed alongside"
        for i in range(options.remeasure):
            if code is None:
                again.append(compare(measure(config, subset, check_dir / f"remeasure-{i + 1}",
                                             options.run.quiet)))
                continue
            # Paired: the baseline's code and the current code, each in a fresh process, one
            # after the other (which goes first alternates); a drift of the machine since the
            # baseline was recorded moves both alike.
            runs = {}
            for which in ("baseline", "remeasure")[:: 1 if i % 2 == 0 else -1]:
                tree, files = (code, impl_files) if which == "baseline" else (PROJECT_ROOT, ())
                runs[which] = measure_code(tree, baseline, subset,
                                           check_dir / f"{which}-{i + 1}", options.run.quiet,
                                           files)
            again.append(compare(runs["remeasure"], against=runs["baseline"]))
    verdict = confirm(comparison, again, against)
    _write_verdict(verdict, check_dir)
    return EXIT_FAILED if verdict.regressions else EXIT_OK


def _write_verdict(verdict: Comparison, check_dir: Path) -> None:
    """``check.md`` (also appended to ``$GITHUB_STEP_SUMMARY``), the comparison's files, and
    the console lines."""
    paths = write_comparison(verdict, check_dir)
    line = summary_line(verdict)
    summary = f"## layerbench check: {line}\n\n" + paths[1].read_text(encoding="utf-8")
    (check_dir / "check.md").write_text(summary, encoding="utf-8")
    if step_summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(summary.replace("](compare.png)", f"]({check_dir / 'compare.png'})") + "\n")
    for text in [*regression_lines(verdict, with_run=False), line,
                 f"details: {check_dir / 'check.md'}"]:
        say(text)


def _recorded_config(meta: dict[str, Any], where: Path) -> BenchConfig:
    try:
        return config_from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{where}: no usable configuration in meta.json ({exc})") from None


def measure_code(tree: Path, baseline: Path, cases: list[Case], run_dir: Path, quiet: bool,
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
        raise UsageError(f"timing the code in {tree} failed (exit {proc.returncode}): "
                         f"{' '.join(command)}")
    _, meta = load_run(run_dir)
    root = (meta.get("machine") or {}).get("code_root")
    if root is None or Path(root).resolve() != tree.resolve():
        raise UsageError(f"{run_dir}: timed the code in {root}, not {tree}")
    return run_dir


def measure_like(like: Path, keys: Path, out: Path, run: RunOptions) -> int:
    """The hidden ``measure`` command: time the cases in ``keys`` with this copy's code,
    configured as run ``like`` was (``run.impl_files`` instead of its implementation files,
    when given). ``check`` runs it in a stored copy of the code, so its options stay stable."""
    try:
        meta = json.loads((like / "meta.json").read_text(encoding="utf-8"))
        with keys.open(newline="", encoding="utf-8") as f:
            wanted = {tuple(row[c] for c in KEY_COLUMNS) for row in csv.DictReader(f)}
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"measure: {exc}") from None
    config = _recorded_config(meta, like)
    config = dataclasses.replace(config, impl_files=run.impl_files or config.impl_files)
    load_impl_files(config.impl_files)
    config = dataclasses.replace(config, layers=tuple(
        name for name in config.layers if any(key[0] == name for key in wanted)))
    cases = [c for c in planned(config) if c.key in wanted]
    if len(cases) != len(wanted):
        raise UsageError(f"measure: {len(wanted) - len(cases)} case(s) of {keys} are not in "
                         "this code's plan")
    measure(config, cases, out, run.quiet)
    return EXIT_OK


def save_code(baseline: Path, impl_files: tuple[Path, ...]) -> Path:
    """Store the code being timed in ``baseline/code.tar.gz``: this project's ``cli.py`` and
    packages (Python files) and the implementation files, as ``impl_files/<i>_<name>``.

    A check times flagged cases with this code and the current code alongside, so a machine
    that drifted since the baseline was recorded is not taken for a regression.
    """
    path = baseline / CODE_FILE
    with tarfile.open(path, "w:gz") as tar:
        for part in CODE_PARTS:
            source = PROJECT_ROOT / part
            files = [source] if source.is_file() else sorted(source.rglob("*.py"))
            for file in files:
                tar.add(file, arcname=str(file.relative_to(PROJECT_ROOT)))
        for i, file in enumerate(impl_files):
            tar.add(file, arcname=f"impl_files/{i}_{file.name}")
    return path


def load_code(baseline: Path, dest: Path) -> tuple[Path | None, tuple[Path, ...], str]:
    """The baseline's stored code unpacked into the new directory ``dest``: (``dest``, its
    implementation files, "") or (None, (), why not)."""
    path = baseline / CODE_FILE
    if not path.is_file():
        return None, (), f"{baseline} stores no code ({CODE_FILE}; save the baseline again)"
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
            if any(Path(n).is_absolute() or ".." in Path(n).parts for n in names):
                return None, (), f"{path}: a path outside the archive"
            dest.mkdir(parents=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python < 3.10.12: the names are checked above
                tar.extractall(dest)
    except (OSError, tarfile.TarError) as exc:
        return None, (), f"{path}: unreadable ({exc})"
    impl_dir = dest / "impl_files"
    impl_files = tuple(sorted(impl_dir.iterdir(), key=lambda p: int(p.name.split("_")[0]))
                       if impl_dir.is_dir() else ())
    return dest, impl_files, ""

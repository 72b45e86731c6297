"""Evidence that timing holds on a busy machine: the same benchmarks, quiet and under load.

    python benchmarks/interference.py --layers conv,attention --runs 3 --loads 0,1,2 --checks 10

For each layer and each load level L (L CPU-bound busy-loop processes beside the benchmark; 0 is
the quiet reference), runs ``python cli.py bench LAYER --mode fwd --dtype float32 --no-report``
``--runs`` times, the conditions interleaved (quiet #1, load 1 #1, load 2 #1, quiet #2, ...) so
that a slow drift of the host does not line up with one condition. Then it measures, against
the quiet runs:

- **confidently wrong**: a loaded case whose speedup vs the builtin is more than 10% off the
  median of the quiet runs and that carries no flag (``stable == 0`` or a ``flags`` tag);
- **best-implementation agreement**: at each size where every quiet run separates its best
  implementation (confidence intervals apart) and they agree on it, how often a loaded run
  names the same best or reports a tie;
- ``slower`` verdicts of ``cli.py compare`` of quiet run 1 against every other run (quiet
  ones: A/A); the busy warning of ``meta.json`` (``load.warning``); the quiet wall time;
- with ``--checks K``: K regression-gate checks against a quiet baseline of unchanged code,
  each with one busy loop beside it; every failure (exit 1) is a false alarm.

Everything goes to ``OUTDIR/interference.json`` (every number and run path) and
``OUTDIR/interference.md`` (also printed). ``--analyse-only OUTDIR`` re-analyses without
running; ``--skip-done`` continues an interrupted OUTDIR; ``--wall-only --cli OLD/cli.py`` times
quiet runs of another checkout. Run it on an otherwise idle machine: the only load should be
its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"  # one calibration for every checkout timed (--cli)
# CPU-bound; it ends by itself within ~30 ms if this script dies without killing it
BUSY_LOOP = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
             "    for _ in range(1_000_000):\n        pass\n")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, however it is loaded
from interference_analysis import Record, analyse, markdown  # noqa: E402

# ---------------------------------------------------------------------------- running

@contextmanager
def busy_loops(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` busy-loop processes for the duration of the block; killed on any exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def _cli(cli: Path, args: list[str], log: Path, refused_ends: bool = True
         ) -> tuple[int, float, str]:
    """Run ``cli.py ARGS`` in its checkout; exit code, wall seconds, stdout (log: both).
    Exit 2 (bad usage or input) ends this script unless ``refused_ends`` is False."""
    env = {**os.environ}
    env.setdefault("LAYERBENCH_CACHE_DIR", str(CACHE))
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(cli), *args], cwd=cli.parent, env=env,
                          capture_output=True, text=True)
    wall_s = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(args)}\n{done.stdout}\n--- stderr\n{done.stderr}")
    if done.returncode == 130:
        raise KeyboardInterrupt
    if done.returncode == 2 and refused_ends:
        sys.exit(f"cli.py {args[0]} refused its input (exit 2), see {log}:\n"
                 f"{done.stderr.strip()[-500:]}")
    return done.returncode, wall_s, done.stdout


def _rel(path: Path | None, out: Path) -> str | None:
    if path is None:
        return None
    return str(path.relative_to(out)) if path.is_relative_to(out) else str(path)


def bench_once(cli: Path, layer: str, load: int, index: int, args: argparse.Namespace,
               out: Path) -> Record:
    """One ``bench`` run beside ``load`` busy loops; its record (paths relative to ``out``)."""
    where = out / f"{layer}-load{load}-{index}"
    command = ["bench", layer, "--preset", args.preset, "--mode", "fwd", "--dtype", "float32",
               "--quiet", "--no-report", "--out", str(where)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    with busy_loops(load):
        code, wall_s, _ = _cli(cli, command, where / "bench.log")
    runs = sorted(p.parent for p in where.glob("*/meta.json"))
    results = runs[-1] / "results.csv" if runs else where / "none"
    rows = len(pd.read_csv(results)) if results.is_file() and results.stat().st_size else 0
    return {"layer": layer, "load": load, "index": index, "started": started, "exit": code,
            "wall_s": round(wall_s, 2), "run_dir": _rel(runs[-1], out) if runs else None,
            "rows": rows,
            "log": _rel(where / "bench.log", out)}


def compare_runs(cli: Path, runs: list[Record], out: Path) -> None:
    """Compare quiet run 1 of each layer with each of its other runs (in place: the record's
    ``compare_dir``), where not done yet."""
    for run in runs:
        first = _find(runs, run["layer"], 0, 1)
        if run["run_dir"] is None or first is None or first is run or first["run_dir"] is None:
            continue
        where = out / "compare" / f"{run['layer']}-load{run['load']}-{run['index']}"
        log = where.with_suffix(".log")  # beside: compare writes into a directory of its own
        if not (where / "compare.csv").is_file():
            run["compare_exit"] = _cli(cli, ["compare", str(out / first["run_dir"]),
                                             str(out / run["run_dir"]), "--out", str(where)],
                                       log, refused_ends=False)[0]
        run["compare_dir"] = _rel(where, out) if (where / "compare.csv").is_file() else None
        run["compare_log"] = _rel(log, out)


def _find(runs: list[Record], layer: str, load: int, index: int) -> Record | None:
    return next((r for r in runs if (r["layer"], r["load"], r["index"]) == (layer, load, index)),
                None)


def gate_checks(cli: Path, args: argparse.Namespace, out: Path, done: list[Record]
                ) -> list[Record]:
    """A quiet gate baseline, then ``--checks`` checks each beside one busy loop."""
    baseline = out / "gate-baseline"
    if not (baseline / "noise.csv").is_file():
        command = ["check", "--save-baseline", "--baseline", str(baseline), "--layer",
                   args.layers, "--preset", args.check_preset, "--out", str(out / "gate-aa"),
                   "--quiet"]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        _cli(cli, command, out / "gate-aa" / "save-baseline.log")
        if not (baseline / "noise.csv").is_file():
            sys.exit(f"no gate baseline was saved: see {out / 'gate-aa' / 'save-baseline.log'}")
    checks = list(done)
    for index in range(len(done) + 1, args.checks + 1):
        log = out / "checks" / f"check-{index}.log"
        with busy_loops(1):
            code, wall_s, stdout = _cli(cli, ["check", "--baseline", str(baseline), "--out",
                                              str(out / "checks"), "--quiet"], log)
        lines = stdout.splitlines()
        details = next((x.split(": ", 1)[1] for x in lines if x.startswith("details: ")), None)
        checks.append({"index": index, "exit": code, "wall_s": round(wall_s, 2),
                       "summary": next((x for x in lines if x.startswith(("PASS", "FAIL"))), ""),
                       "check_dir": _rel(Path(details).parent, out) if details else None,
                       "log": _rel(log, out)})
        print(f"check #{index}: exit {code} in {wall_s:.0f} s", flush=True)
    return checks


def loads_arg(text: str) -> tuple[int, ...]:
    """``0,1,2``: distinct load levels >= 0, 0 (the quiet reference) among them."""
    try:
        loads = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers") from None
    if min(loads) < 0 or len(set(loads)) != len(loads) or 0 not in loads:
        raise argparse.ArgumentTypeError(f"{text!r}: distinct integers >= 0, including 0")
    return loads


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: at least {low}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--layers", default="conv,attention", help="comma-separated layers")
    p.add_argument("--preset", default="default")
    p.add_argument("--runs", type=_at_least(1), default=3, help="runs per layer and load level")
    p.add_argument("--loads", type=loads_arg, default=(0, 1, 2),
                   help="busy-loop processes beside each run, comma-separated; 0 = quiet")
    p.add_argument("--checks", type=_at_least(0), default=10,
                   help="gate checks beside a busy loop (0: none)")
    p.add_argument("--check-preset", default="quick", help="preset of the gate's baseline")
    p.add_argument("--threads", type=int, default=None, help="passed on to bench and check")
    p.add_argument("--out", type=Path, default=ROOT / ".cache" / "interference")
    p.add_argument("--cli", type=Path, default=ROOT / "cli.py", help="the cli.py to time")
    p.add_argument("--skip-done", action="store_true",
                   help="keep the runs and checks already in OUT/interference.json")
    p.add_argument("--wall-only", action="store_true",
                   help="only quiet runs; print their wall times (OUT/wall.json)")
    p.add_argument("--analyse-only", type=Path, metavar="OUTDIR",
                   help="re-analyse OUTDIR's interference.json; run nothing")
    return p


def _save(out: Path, record: Record) -> None:
    (out / "interference.json").write_text(json.dumps(record, indent=1, default=str))


def _report(out: Path, record: Record, cli: Path | None) -> None:
    if cli is not None:
        compare_runs(cli, record["runs"], out)
    record["analysis"] = analyse(record["runs"], record["checks"], out)
    _save(out, record)
    text = markdown(record["analysis"], record["runs"], record["checks"],
                    {**record.get("config", {}), "cli": record.get("cli")})
    (out / "interference.md").write_text(text)
    print(text)


def _terminate(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # unwinds: the busy loops and the running command are killed


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.analyse_only:
        out = args.analyse_only.resolve()
        _report(out, json.loads((out / "interference.json").read_text()), None)
        return
    signal.signal(signal.SIGTERM, _terminate)
    out, cli = args.out.resolve(), args.cli.resolve()
    out.mkdir(parents=True, exist_ok=True)
    layers = [x.strip() for x in args.layers.split(",") if x.strip()]
    loads = (0,) if args.wall_only else args.loads
    log = out / ("wall.json" if args.wall_only else "interference.json")
    old = json.loads(log.read_text()) if args.skip_done and log.is_file() else {}
    record: Record = {"command": sys.argv, "cli": str(cli), "config": vars(args),
                      "runs": old.get("runs", []), "checks": old.get("checks", [])}
    # interleaved: every condition of every layer once per round
    for index in range(1, args.runs + 1):
        for layer in layers:
            for load in loads:
                if _find(record["runs"], layer, load, index):
                    continue
                run = bench_once(cli, layer, load, index, args, out)
                print(f"{run['started']} {layer} load {load} #{index}: exit {run['exit']} in "
                      f"{run['wall_s']} s, {run['rows']} rows -> {run['run_dir']}"
                      + ("" if run["rows"] else f" (see {run['log']})"), flush=True)
                record["runs"].append(run)
                log.write_text(json.dumps(record, indent=1, default=str))
    if args.wall_only:
        for layer in layers:
            walls = [r["wall_s"] for r in record["runs"] if r["layer"] == layer]
            print(f"{layer}: wall s {', '.join(map(str, walls))}; mean "
                  f"{sum(walls) / len(walls):.1f} ({cli})")
        return
    if args.checks:
        record["checks"] = gate_checks(cli, args, out, record["checks"])
        _save(out, record)
    _report(out, record, cli)


if __name__ == "__main__":
    main()

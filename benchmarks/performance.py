"""How fast the implementations and the harness are on this machine: docs/performance.md.

    python benchmarks/performance.py                   # every part (about 25 min on 2 cores)
    python benchmarks/performance.py --parts ratios,agreement --out /tmp/perf.md

Parts (each checks the targets of the performance issue and says PASS or MISS; nothing here is
a test, timings are never asserted by the test suite):

- ``ratios``: ``bench LAYER --preset default --compile none`` for conv, attention, mha, rnn, bn
  and linear, ``--repeats`` times each (the layers in turn); per size the median over the runs
  of time(impl)/time(builtin), both from the same run; per implementation the geometric mean
  over the sizes; the best hand-written one against its target, and its roofline fraction at
  the largest size.
- ``stability``: ``bench conv --preset default`` 5 times; per case of 50 us or more, the max/min
  ratio of its medians (target 1.05); the runs' wall times (target 60 s each).
- ``suite``: ``bench all --preset quick --compile none`` wall time (target 180 s).
- ``agreement``: in one process, each conv case's median from the harness against
  ``torch.utils.benchmark``'s ``blocked_autorange`` of the same callable, 3 interleaved
  rounds each (target 3%).
- ``compile``: ``bench LAYER --compile none,default`` of the vectorised implementations, twice
  into an empty inductor cache: compiled no slower than eager on the larger half of the sizes,
  and the second run's compile time (warm cache) against the first's (cold).

Only ratios measured within one run are compared; every figure says where it was measured.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reports.markdown import md_table  # noqa: E402
from reports.schema import load_run  # noqa: E402

TARGETS = {"conv": 1.5, "attention": 1.2, "mha": 1.2, "rnn": 1.3, "bn train": 1.5,
           "bn eval": 1.2, "linear": 1.05}
NOT_HAND_WRITTEN = ("builtin", "torch_layers")  # the built-ins themselves
PARTS = ("ratios", "stability", "suite", "agreement", "compile")
COMPILE_LAYERS = ("conv", "attention", "mha", "rnn", "bn", "linear")


THREADS: list[str] = []  # ["--threads", "N"] when --threads is given


def bench(args: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[Path, float]:
    """Run ``python cli.py bench ARGS`` into a fresh ``out``; its run directory and wall time."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "cli.py", "bench", *args, *THREADS, "--out", str(out),
                           "--quiet", "--no-report"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    wall = time.perf_counter() - start
    (run_dir,) = set(out.iterdir()) - before
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"bench {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}")
    return run_dir, wall


def _group(results: pd.DataFrame) -> pd.Series:
    """``conv``, or ``bn train`` / ``bn eval`` (bn's two modes have separate targets)."""
    name = results["layer"].astype(str)
    if "p_training" in results.columns:
        train = results["p_training"].map({1: " train", 0: " eval"})
        name = name + train.where(results["layer"] == "bn", "").fillna("")
    return name


def case_ratios(results: pd.DataFrame) -> pd.DataFrame:
    """Per layer group, implementation and size: time(impl) / time(builtin) of each run (both
    correct, from the same run), then the median over the runs and its spread (max/min).

    ``results`` holds one or more runs (``run_id``); each ratio is taken within its run, so
    the machine's drift between runs never enters a ratio, and the median drops a run that
    met a transient slow state.
    """
    ok = results[(results["status"] == "ok") & (results["compile"] == "none")]
    ok = ok.assign(group=_group(ok))
    key = ["run_id", "group", "case"]
    builtin = ok[ok["impl"] == "builtin"].set_index(key)["median_ms"]
    mine = ok[ok["impl"] != "builtin"]
    ref = builtin.reindex(pd.MultiIndex.from_frame(mine[key])).to_numpy(float)
    mine = mine.assign(ratio=mine["median_ms"].to_numpy(float) / ref).dropna(subset=["ratio"])
    return (mine.groupby(["group", "impl", "case"], sort=False)
            .agg(ratio=("ratio", "median"), spread=("ratio", lambda r: r.max() / r.min()),
                 runs=("ratio", "size"), flops=("flops", "first"),
                 roofline_frac=("roofline_frac", "median"))
            .reset_index())


def ratio_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per layer group and implementation: sizes, geomean/min/max over the sizes of the median
    ratio (``case_ratios``), and the roofline fraction at the largest size."""
    per_case = case_ratios(results)
    timed = results[(results["impl"] == "builtin") & (results["status"] == "ok")
                    & (results["compile"] == "none")]
    sizes = timed.assign(group=_group(timed)).groupby("group")["case"].nunique()
    rows = []
    for (group, impl), g in per_case.groupby(["group", "impl"], sort=False):
        ratio = g["ratio"].to_numpy(float)
        largest = g.loc[g["flops"].idxmax()]
        rows.append({"layer": group, "impl": impl,
                     "sizes": f"{len(g)}/{int(sizes.get(group, 0))}",
                     "geomean": float(np.exp(np.log(ratio).mean())),
                     "min": float(ratio.min()), "max": float(ratio.max()),
                     "complete": len(g) == int(sizes.get(group, 0)),
                     "roofline_at_largest": float(largest["roofline_frac"]),
                     "largest": str(largest["case"])})
    return pd.DataFrame(rows)


def best_table(ratios: pd.DataFrame, builtin_roofline: dict[str, float]) -> pd.DataFrame:
    """The best hand-written implementation per group (all sizes measured) against its target."""
    rows = []
    for group, target in TARGETS.items():
        mine = ratios[(ratios["layer"] == group) & ratios["complete"]
                      & ~ratios["impl"].isin(NOT_HAND_WRITTEN)]
        if mine.empty:
            continue
        best = mine.loc[mine["geomean"].idxmin()]
        rows.append({"layer": group, "best hand-written": best["impl"],
                     "geomean time / builtin": round(best["geomean"], 3), "target": target,
                     "verdict": "PASS" if best["geomean"] <= target else "MISS",
                     "per-size range": f"{best['min']:.2f}-{best['max']:.2f}",
                     "roofline at largest size": f"{best['roofline_at_largest']:.1%}",
                     "builtin roofline": f"{builtin_roofline.get(group, math.nan):.1%}",
                     "largest size": best["largest"]})
    return pd.DataFrame(rows)


RATIO_LAYERS = ("conv", "attention", "mha", "rnn", "bn", "linear")


def part_ratios(work: Path, layers: tuple[str, ...] = RATIO_LAYERS,
                repeats: int = 3) -> list[str]:
    frames, walls = [], {layer: [] for layer in layers}
    for _ in range(repeats):  # the layers in turn, so a slow spell falls on one run of each
        for layer in layers:
            run_dir, wall = bench([layer, "--preset", "default", "--compile", "none"],
                                  work / "ratios")
            walls[layer].append(wall)
            frames.append(load_run(run_dir)[0])
    results = pd.concat(frames, ignore_index=True)
    ratios = ratio_table(results)
    ok = results[(results["status"] == "ok") & (results["impl"] == "builtin")]
    ok = ok.assign(group=_group(ok))
    roof = {g: float(r.groupby("case")["roofline_frac"].median().loc[
        r.loc[r["flops"].idxmax(), "case"]]) for g, r in ok.groupby("group")}
    shown = ratios.drop(columns=["complete"]).round(3)
    per_case = case_ratios(results)
    best = best_table(ratios, roof)
    chosen = per_case.iloc[:0] if best.empty else per_case.merge(
        best[["layer", "best hand-written"]].rename(
            columns={"layer": "group", "best hand-written": "impl"}), on=["group", "impl"])
    return ["## Implementations against the built-ins", "",
            f"`bench LAYER --preset default --compile none` (forward, float32), {repeats} "
            "run(s) per layer, the layers in turn; per size, ratio = median time of the "
            "implementation / median time of the builtin in the same run, then the median of "
            "that ratio over the runs (below 1: faster than the builtin); geomean over the "
            "sizes. Wall time per run: " + ", ".join(
                f"{k} {min(v):.0f}-{max(v):.0f} s" for k, v in walls.items()) + ".", "",
            md_table(best), "", "Every implementation:", "", md_table(shown), "",
            "Per size, the best hand-written implementation (spread: max/min of the "
            "within-run ratios over the runs):", "",
            md_table(chosen[["group", "impl", "case", "ratio", "spread", "runs"]].round(3)), ""]


def part_stability(work: Path, runs: int = 5) -> tuple[list[str], list[float]]:
    medians, walls = [], []
    for i in range(runs):
        run_dir, wall = bench(["conv", "--preset", "default", "--compile", "none"],
                              work / "stability")
        walls.append(wall)
        frame = load_run(run_dir)[0]
        frame = frame[frame["status"] == "ok"]
        medians.append(frame.set_index(["impl", "case"])["median_ms"].rename(f"run{i + 1}"))
    table = pd.concat(medians, axis=1).dropna()
    table = table[table.min(axis=1) >= 0.05]
    spread = (table.max(axis=1) / table.min(axis=1)).rename("max/min")
    worst = spread.sort_values(ascending=False).head(5)
    within = int((spread <= 1.05).sum())
    lines = ["## Harness stability and overhead", "",
             f"`bench conv --preset default --compile none`, {runs} runs one after another: "
             f"of {len(spread)} cases of 50 us or more, {within} kept the max/min ratio of their "
             f"medians within 1.05 (target: all); median ratio {spread.median():.3f}, largest "
             f"{spread.max():.3f} ({'PASS' if within == len(spread) else 'MISS'}).", "",
             "Largest spreads:", "",
             md_table(worst.reset_index().round(3)), "",
             f"Wall time per run: {', '.join(f'{w:.0f} s' for w in walls)} (target 60 s: "
             f"{'PASS' if max(walls) <= 60 else 'MISS'}).", ""]
    return lines, walls


def part_suite(work: Path) -> list[str]:
    _, wall = bench(["all", "--preset", "quick", "--compile", "none"], work / "suite")
    return [f"`bench all --preset quick --compile none`: {wall:.0f} s wall (target 180 s: "
            f"{'PASS' if wall <= 180 else 'MISS'}).", ""]


def part_agreement(rounds: int = 3) -> list[str]:
    import torch
    from torch.utils import benchmark

    from impls import REGISTRY
    from suites.cases import plan
    from suites.config import BenchConfig, TimingConfig
    from suites.devices import device
    from suites.runner import prepared
    from suites.timing import measure

    config = BenchConfig(layers=("conv",), preset="default")
    threads = torch.get_num_threads()
    rows = []
    for case in plan(config):
        if REGISTRY.impl(case.layer, case.impl).naive:
            continue
        step = prepared(case, seed=0)
        timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=threads)
        ours, theirs = [], []
        with torch.no_grad():
            # Interleaved rounds, the order swapped each round: the machine's drift over the
            # seconds of a case falls on both methods alike and shows as round-to-round spread.
            for i in range(rounds):
                for method in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                    if method == "ours":
                        ours.append(measure(step, device("cpu"), TimingConfig(), threads).median_s)
                    else:
                        theirs.append(timer.blocked_autorange(min_run_time=0.5).median)
        a, b = float(np.median(ours)), float(np.median(theirs))
        rows.append({"impl": case.impl, "case": case.label, "harness_ms": a * 1e3,
                     "blocked_autorange_ms": b * 1e3, "ratio": a / b,
                     "harness_spread": max(ours) / min(ours),
                     "autorange_spread": max(theirs) / min(theirs)})
    table = pd.DataFrame(rows)
    off = (table["ratio"] - 1).abs()
    steady = table[(table[["harness_spread", "autorange_spread"]] <= 1.03).all(axis=1)]
    steady_off = (steady["ratio"] - 1).abs()
    return ["## Harness agreement with torch.utils.benchmark", "",
            f"In one process ({threads} threads), each conv default case (naive loops left out) "
            f"timed {rounds} times by each method, interleaved (the order swapped each round): "
            "the harness (`measure`, `--min-time 0.5`) and `Timer.blocked_autorange("
            "min_run_time=0.5)` of the same callable; ratio = median of the harness's medians / "
            "median of blocked_autorange's; spread = max/min of one method's medians over the "
            f"rounds (the machine's own noise). Within 3%: {int((off <= 0.03).sum())} of "
            f"{len(table)} ({'PASS' if (off <= 0.03).all() else 'MISS'}); largest difference "
            f"{off.max():.1%}. Cases whose both spreads stay within 3%: "
            f"{int((steady_off <= 0.03).sum())} of {len(steady)} within 3%"
            + (f" (largest {steady_off.max():.1%})." if len(steady) else "."), "",
            md_table(table.round(4)), ""]


def part_compile(work: Path, layers: tuple[str, ...] = COMPILE_LAYERS) -> list[str]:
    cache = Path(tempfile.mkdtemp(prefix="inductor-", dir=work))
    lines = ["## torch.compile against eager", "",
             "`bench LAYER --compile none,default` of the vectorised implementations (no naive "
             f"loops), run twice into an empty inductor cache ({cache.name}): the first run "
             "compiles cold, the second should find every graph cached.", ""]
    from impls import REGISTRY

    rows = []
    for layer in layers:
        vectorised = ",".join(i.name for i in REGISTRY.impls(layer)
                              if not i.naive and "cpu" in i.devices)
        runs = [load_run(bench([layer, "--preset", "default", "--compile", "none,default",
                                "--impl", vectorised],
                               work / f"compile-{i}",
                               env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})[0])[0]
                for i in range(2)]
        rows += _compile_rows(layer, runs[0], runs[1])
    table = pd.DataFrame(rows)
    lines += [md_table(table.round(3)), ""]
    return lines


def _compile_rows(layer: str, cold: pd.DataFrame, warm: pd.DataFrame) -> list[dict[str, object]]:
    from impls import REGISTRY

    rows = []
    for impl, g in warm[warm["status"] == "ok"].groupby("impl", sort=False):
        if REGISTRY.impl(layer, str(impl)).naive:
            continue
        eager = g[g["compile"] == "none"].set_index("case")
        comp = g[g["compile"] == "default"].set_index("case")
        both = eager.index.intersection(comp.index)
        if both.empty:
            continue
        order = eager.loc[both, "flops"].sort_values().index
        larger = order[len(order) // 2:]
        ratio = comp.loc[larger, "median_ms"] / eager.loc[larger, "median_ms"]
        first = cold[(cold["impl"] == impl) & (cold["compile"] == "default")]["compile_s"]
        rows.append({"layer": layer, "impl": impl,
                     "compiled/eager, larger half": ", ".join(f"{r:.2f}" for r in ratio),
                     "verdict": "PASS" if (ratio <= 1.0).all() else "MISS",
                     "compile_s cold (median)": float(first.median()),
                     "compile_s warm (median)": float(comp["compile_s"].median())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "performance")
    parser.add_argument("--ratio-layers", default=",".join(RATIO_LAYERS),
                        help="layers of the ratios part")
    parser.add_argument("--compile-layers", default=",".join(COMPILE_LAYERS),
                        help="layers of the compile part (cold compiles take ~10 s each)")
    parser.add_argument("--repeats", type=lambda v: max(1, int(v)), default=3,
                        help="runs per layer in the ratios part (median ratio per size)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for every measurement (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        THREADS[:] = ["--threads", str(args.threads)]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := [p for p in parts if p not in PARTS]:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    from suites.environment import machine_info

    machine = machine_info(["cpu"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    lines = ["# Performance: implementations and harness", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine.get('cpu_model')} "
             f"({machine.get('cpu_count')} cores, {machine.get('threads')} threads), torch "
             f"{machine.get('torch')}, commit {commit}, by `python benchmarks/performance.py "
             f"--parts {','.join(parts)}{' ' + ' '.join(THREADS) if THREADS else ''}`; glibc "
             f"malloc thresholds {machine.get('malloc') or 'left to the system'}.", ""]
    steps: dict[str, Callable[[], list[str]]] = {
        "ratios": lambda: part_ratios(args.work, tuple(args.ratio_layers.split(",")),
                                      args.repeats),
        "stability": lambda: part_stability(args.work)[0],
        "suite": lambda: part_suite(args.work),
        "agreement": part_agreement,
        "compile": lambda: part_compile(args.work, tuple(args.compile_layers.split(","))),
    }
    for part in parts:
        start = time.perf_counter()
        print(f"{part} ...", flush=True)
        lines += steps[part]()
        print(f"{part}: {time.perf_counter() - start:.0f} s", flush=True)
        args.out.write_text("\n".join(lines), encoding="utf-8")  # each part as it ends
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

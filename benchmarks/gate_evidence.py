"""Evidence for the regression gate: A/A checks of unchanged code, and planted slowdowns.

    python benchmarks/gate_evidence.py --aa 20 --planted 5 --out .cache/gate-evidence

Runs ``python cli.py check --baseline BASELINE`` one after another (never two at once: they
would disturb each other's timings):

- ``aa``: the code of this checkout's HEAD, unchanged (a worktree). Every failure is a false
  alarm.
- ``conv-im2col-1.3x``: a worktree whose conv ``im2col`` does its unfold + GEMM again
  on the top 30% of the output rows (real extra work, about 1.3x at sizes where the GEMM
  dominates; more where fixed per-call costs dominate).
- ``attention-matmul-2x``: a worktree whose attention ``matmul`` computes everything twice.

Each try's exit code, wall time, verdict line and the planted implementation's measured ratios
go to ``tries.csv`` in ``--out``, and a Markdown summary is printed. Interrupt and rerun with
``--skip-done`` to continue.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"  # one calibration for every tree
FIELDS = ["kind", "try", "exit", "wall_s", "summary", "check_dir", "regressions",
          "planted_ratios", "started"]

IM2COL_LINE = "    out = out + bias.view(1, C_out, 1)  # (N, C_out, L)\n"
IM2COL_EXTRA = (
    "    # planted slowdown: unfold + GEMM again on the top 30% of the output rows\n"
    "    rows = (max(1, round(0.3 * H_out)) - 1) * stride + k\n"
    "    band = F.pad(x, (padding, padding, padding, padding))[:, :, :rows]\n"
    "    _ = weight.reshape(C_out, -1) @ F.unfold(band, k, stride=stride)\n"
)
ATTENTION_BODY = (
    "    attn = torch.matmul(q / temperature, k.transpose(2, 3))  # (N, h, len_q, len_k)\n"
    "    if mask is not None:\n"
    "        attn = attn.masked_fill(mask == 0, MASK_FILL)\n"
    "    attn = F.softmax(attn, dim=-1)\n"
    "    output = torch.matmul(attn, v)  # (N, h, len_q, d_v)\n"
)


def _plant_im2col(text: str) -> str:
    assert IM2COL_LINE in text, "impls/conv.py changed: update the planted im2col slowdown"
    return text.replace(IM2COL_LINE, IM2COL_LINE + IM2COL_EXTRA, 1)


def _plant_attention(text: str) -> str:
    assert ATTENTION_BODY in text, "impls/attention.py changed: update the planted slowdown"
    twice = "    for _ in range(2):  # planted slowdown: everything twice\n" + "".join(
        "    " + line for line in ATTENTION_BODY.splitlines(keepends=True))
    return text.replace(ATTENTION_BODY, twice, 1)


# kind -> (file to change, change, (layer, impl) whose ratios to record)
PLANTS: dict[str, tuple[str, Callable[[str], str], tuple[str, str]]] = {
    "conv-im2col-1.3x": ("impls/conv.py", _plant_im2col, ("conv", "im2col")),
    "attention-matmul-2x": ("impls/attention.py", _plant_attention, ("attention", "matmul")),
}


def planted_tree(kind: str, dest: Path) -> Path:
    """A git worktree of this checkout's HEAD with ``kind``'s slowdown planted, uncommitted
    (``aa``: unchanged), so edits to the checkout while the tries run change nothing, and
    ``check`` finds the baseline's commit to time alongside. Commit your changes first."""
    tree = dest / kind
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), "HEAD"],
                       cwd=ROOT, check=True, capture_output=True)
        if kind in PLANTS:
            path, change, _ = PLANTS[kind]
            (tree / path).write_text(change((tree / path).read_text()))
    return tree


def one_check(kind: str, index: int, baseline: Path, out: Path) -> dict[str, object]:
    """Run one ``check`` of ``kind``; its outcome as a ``tries.csv`` row."""
    tree = planted_tree(kind, out / "trees")
    runs = out / "runs"
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "cli.py", "check", "--baseline", str(baseline),
                           "--out", str(runs), "--quiet"], cwd=tree, capture_output=True,
                          text=True, env={**os.environ, "LAYERBENCH_CACHE_DIR": str(CACHE)})
    wall = time.perf_counter() - t0
    lines = done.stdout.splitlines()
    summary = next((x for x in lines if x.startswith(("PASS", "FAIL"))), done.stderr[-300:])
    details = next((x.split(": ", 1)[1] for x in lines if x.startswith("details: ")), "")
    check_dir = Path(details).parent if details else Path()
    if check_dir and not check_dir.is_absolute():
        check_dir = tree / check_dir
    regressions = [x.split(":")[0].removeprefix("REGRESSION ") for x in lines
                   if x.startswith("REGRESSION ")]
    return {"kind": kind, "try": index, "exit": done.returncode, "wall_s": round(wall, 1),
            "summary": summary, "check_dir": str(check_dir), "regressions": "; ".join(regressions),
            "planted_ratios": _planted_ratios(kind, check_dir), "started": started}


def _planted_ratios(kind: str, check_dir: Path) -> str:
    """``case xRATIO verdict`` of the planted implementation (seconds basis where there)."""
    if kind not in PLANTS or not (check_dir / "compare.csv").is_file():
        return ""
    layer, impl = PLANTS[kind][2]
    frame = pd.read_csv(check_dir / "compare.csv", keep_default_na=False)
    rows = frame[(frame["layer"] == layer) & (frame["impl"] == impl)
                 & (frame["compile"] == "none")]
    return "; ".join(f"{r['case']} x{float(r['ratio']):.2f} {r['verdict']}"
                     + (f" ({r['note']})" if r["note"] else "") for _, r in rows.iterrows())


def summarise(rows: list[dict[str, object]]) -> str:
    """Markdown: per kind, tries, how many failed (exit 1), and the wall times."""
    frame = pd.DataFrame(rows)
    lines = ["| check | tries | exit 1 (failed) | other exits | wall time (s), median [min-max] |",
             "|---|---|---|---|---|"]
    for kind, group in frame.groupby("kind", sort=False):
        exits = group["exit"].astype(int)
        wall = group["wall_s"].astype(float)
        lines.append(f"| {kind} | {len(group)} | {int((exits == 1).sum())} | "
                     f"{int((~exits.isin([0, 1])).sum())} | {wall.median():.0f} "
                     f"[{wall.min():.0f}-{wall.max():.0f}] |")
    return "\n".join(lines)


def detection(rows: list[dict[str, object]]) -> str:
    """Markdown: per planted slowdown and size of the planted implementation, the ratios
    measured and how many tries confirmed it slower."""
    lines = ["| planted | case | ratio now/baseline (first measurement), min-max | confirmed "
             "slower |", "|---|---|---|---|"]
    for kind in PLANTS:
        seen: dict[str, list[tuple[float, bool]]] = {}
        tries = [r for r in rows if r["kind"] == kind]
        for row in tries:
            for item in filter(None, str(row["planted_ratios"]).split("; ")):
                case, ratio, verdict = item.split(" ")[:3]
                seen.setdefault(case, []).append((float(ratio[1:]), verdict == "slower"))
        for case, found in seen.items():
            ratios = [r for r, _ in found]
            lines.append(f"| {kind} | {case} | x{min(ratios):.2f}-x{max(ratios):.2f} | "
                         f"{sum(s for _, s in found)} of {len(tries)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, default=ROOT / ".ci" / "baseline")
    parser.add_argument("--aa", type=int, default=20, help="A/A checks of unchanged code")
    parser.add_argument("--planted", type=int, default=5, help="checks per planted slowdown")
    parser.add_argument("--plants", default=",".join(PLANTS),
                        help=f"comma-separated, of: {', '.join(PLANTS)}")
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "gate-evidence")
    parser.add_argument("--skip-done", action="store_true",
                        help="keep the tries already in OUT/tries.csv")
    parser.add_argument("--summarise", action="store_true",
                        help="only print the summary of OUT/tries.csv")
    args = parser.parse_args()
    if args.summarise:
        rows = list(csv.DictReader((args.out / "tries.csv").open()))
        print(summarise(rows), "", detection(rows), sep="\n")
        return
    baseline, out = args.baseline.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "tries.csv"
    rows = (list(csv.DictReader(log.open())) if args.skip_done and log.is_file() else [])
    done = {(r["kind"], int(r["try"])) for r in rows}
    plan = [("aa", i + 1) for i in range(args.aa)]
    for kind in filter(None, re.split(r"\s*,\s*", args.plants)):
        if kind not in PLANTS:
            parser.error(f"unknown plant {kind!r}")
        plan += [(kind, i + 1) for i in range(args.planted)]
    # interleave: plants between A/A tries, so both see the same hours of the machine
    plan.sort(key=lambda p: (p[1], p[0] != "aa"))
    for kind in dict.fromkeys(k for k, _ in plan):  # every copy now: all of the same code
        planted_tree(kind, out / "trees")
    with log.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        for kind, index in plan:
            if (kind, index) in done:
                continue
            row = one_check(kind, index, baseline, out)
            print(f"{row['started']} {kind} #{index}: exit {row['exit']} in {row['wall_s']} s: "
                  f"{row['summary']}" + (f" [{row['regressions']}]" if row["regressions"]
                                         else ""), flush=True)
            writer.writerow(row)
            f.flush()
            rows.append(row)
    print(summarise(rows), "", detection(rows), sep="\n")


if __name__ == "__main__":
    main()

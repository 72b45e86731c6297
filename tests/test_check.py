"""The regression gate: baseline noise, re-measured verdicts, and ``check`` end to end."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.check import (
    case_noise,
    combine,
    confirm,
    gate,
    load_noise,
    restrict,
    same_machine_kind,
)
from reports.compare import compare_runs
from reports.schema import RunDataError, load_run
from tests._cli import Job, Jobs, describe, invoke, one_line_error, run_cli
from tests._runs import FakeCase, fake_run, noisy

# --- noise and verdicts on fabricated runs ---------------------------------------------------


def test_case_noise_is_the_spread_of_log_medians(tmp_path: Path) -> None:
    im2col_ms = [2.0, 2.2, 1.8]
    runs = [fake_run(tmp_path / f"r{i}", [FakeCase("builtin", seconds=[1e-3] * 5),
                                          FakeCase("im2col", seconds=[ms * 1e-3] * 5)])
            for i, ms in enumerate(im2col_ms)]
    noise = case_noise(runs).set_index("impl")
    expected = float(np.std(np.log(im2col_ms), ddof=1))
    assert noise.loc["im2col", "noise_abs"] == pytest.approx(expected)
    assert noise.loc["im2col", "noise_rel"] == pytest.approx(expected)  # builtin constant
    assert noise.loc["builtin", "noise_rel"] == 0.0
    assert (noise["repeats"] == 3).all()


def test_a_directory_without_noise_is_not_a_baseline(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", [FakeCase("builtin", seconds=[1e-3] * 5)])
    with pytest.raises(RunDataError, match="not a baseline"):
        load_noise(run, "relative")


def _pair(tmp_path: Path, name: str, slow: float) -> Path:
    return fake_run(tmp_path / name, [
        FakeCase("builtin", seconds=noisy(1e-3, n=40, seed=len(name))),
        FakeCase("im2col", seconds=noisy(2e-3 * slow, n=40, seed=len(name) + 1)),
        FakeCase("builtin", layer="pool", seconds=noisy(1e-3, n=40, seed=9))])


def test_a_flag_that_reproduces_stays_a_regression(tmp_path: Path) -> None:
    base = _pair(tmp_path, "base", 1.0)
    first = compare_runs([base, _pair(tmp_path, "slow", 2.0)], "absolute")
    assert first.regressions == 1
    again = [compare_runs([base, _pair(tmp_path, f"again{i}", 2.0)], "absolute")
             for i in range(2)]
    kept = confirm(first, again)
    row = kept.frame.set_index("impl").loc["im2col"]
    assert row["verdict"] == "slower" and kept.regressions == 1
    assert "confirmed by 2" in row["note"]


def test_a_flag_that_does_not_reproduce_is_suspicious(tmp_path: Path) -> None:
    base = _pair(tmp_path, "base", 1.0)
    first = compare_runs([base, _pair(tmp_path, "slow", 2.0)], "absolute")
    again = [compare_runs([base, _pair(tmp_path, "fine", 1.0)], "absolute")]
    kept = confirm(first, again)
    row = kept.frame.set_index("impl").loc["im2col"]
    assert row["verdict"] == "suspicious" and not row["regression"]
    assert kept.regressions == 0
    assert "did not reproduce" in row["note"]


def test_measured_noise_widens_the_threshold(tmp_path: Path) -> None:
    base = _pair(tmp_path, "base", 1.0)
    slow = _pair(tmp_path, "slow", 1.3)
    key = ("conv", "im2col", "none", "cpu", "float32", "fwd", "N1")
    assert compare_runs([base, slow], "absolute").regressions == 1
    quiet = compare_runs([base, slow], "absolute", noise={key: 0.15})  # bar: 1 + 3 x 0.15
    assert quiet.regressions == 0
    assert quiet.frame.set_index("impl").loc["im2col", "threshold_used"] == pytest.approx(0.45)


def test_slower_needs_both_bases_on_one_kind_of_machine(tmp_path: Path) -> None:
    """A builtin that alone got faster makes the others look slower relative to it only."""
    base = fake_run(tmp_path / "base", [FakeCase("builtin", seconds=noisy(1e-3, n=40)),
                                        FakeCase("im2col", seconds=noisy(2e-3, n=40, seed=1))])
    quick_builtin = fake_run(tmp_path / "b", [
        FakeCase("builtin", seconds=noisy(0.6e-3, n=40, seed=2)),
        FakeCase("im2col", seconds=noisy(2e-3, n=40, seed=3))])
    really_slower = fake_run(tmp_path / "c", [
        FakeCase("builtin", seconds=noisy(1e-3, n=40, seed=4)),
        FakeCase("im2col", seconds=noisy(3e-3, n=40, seed=5))])
    for run, expected in ((quick_builtin, "suspicious"), (really_slower, "slower")):
        both = combine(compare_runs([base, run], "relative"),
                       compare_runs([base, run], "absolute"))
        row = both.frame.set_index("impl").loc["im2col"]
        assert row["verdict"] == expected, row["note"]
        assert both.regressions == (expected == "slower")
    assert same_machine_kind(load_run(base)[1], load_run(quick_builtin)[1])


def test_gate_widens_by_the_noise_in_seconds_and_guards_drift_plainly(tmp_path: Path) -> None:
    """On one kind of machine a steady implementation 1.3x slower in seconds fails even when
    its time relative to a jumpy builtin moved a lot between A/A runs; relative-only, that
    relative noise hides it."""
    base = _pair(tmp_path, "base", 1.0)
    slow = _pair(tmp_path, "slow", 1.3)
    pd.DataFrame([{"layer": "conv", "impl": "im2col", "compile": "none", "device": "cpu",
                   "dtype": "float32", "mode": "fwd", "case": "N1", "repeats": 5,
                   "noise_abs": 0.02, "noise_rel": 0.15}]).to_csv(base / "noise.csv",
                                                                   index=False)
    both = gate(base, slow, "both", 0.10, 0.01, ("conv", "pool"))
    row = both.frame.set_index("impl").loc["im2col"]
    assert row["verdict"] == "slower" and both.regressions == 1, row["note"]
    assert row["threshold_used"] == pytest.approx(0.10)  # the drift guard: not widened
    relative = gate(base, slow, "relative", 0.10, 0.01, ("conv", "pool"))
    assert relative.regressions == 0  # bar 1 + 3 x 0.15
    # a machine-wide slowdown (the builtin too) moves only the seconds: no regression
    everything = fake_run(tmp_path / "all", [
        FakeCase("builtin", seconds=noisy(1.3e-3, n=40, seed=7)),
        FakeCase("im2col", seconds=noisy(2.6e-3, n=40, seed=8)),
        FakeCase("builtin", layer="pool", seconds=noisy(1.3e-3, n=40, seed=9))])
    assert gate(base, everything, "both", 0.10, 0.01, ("conv", "pool")).regressions == 0


def test_restrict_keeps_the_checked_layers(tmp_path: Path) -> None:
    base = _pair(tmp_path, "base", 1.0)
    c = restrict(compare_runs([base, _pair(tmp_path, "slow", 2.0)], "absolute"), ("pool",))
    assert set(c.frame["layer"]) == {"pool"} and c.regressions == 0


# --- check from the command line --------------------------------------------------------------

POOL_IMPL = '''
import torch.nn.functional as F
from impls import register_impl

@register_impl("pool", "mine")
def max_pool2d_mine(x, k):
    return {mine}

@register_impl("pool", "other")
def max_pool2d_other(x, k):
    return {other}
'''
GOOD, WRONG = "F.max_pool2d(x, k)", "F.avg_pool2d(x, k)"
SLOW = "[F.max_pool2d(x, k) for _ in range(30)][-1]"  # the same result, 30 times the work
SAVE = ("--layer", "pool", "--repeats", "2", "--min-time", "0.05", "--max-time", "0.2",
        "--threads", "1", "--quiet")


@dataclass(frozen=True)
class Saved:
    """A baseline of the pool layer with the user's file ``mine`` (two correct impls)."""

    root: Path
    baseline: Path
    mine: Path


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    root = tmp_path_factory.mktemp("check")
    mine = root / "mine.py"
    mine.write_text(POOL_IMPL.format(mine=GOOD, other=GOOD), encoding="utf-8")
    baseline = root / "baseline"
    proc = run_cli("check", "--save-baseline", "--baseline", baseline, "--impl-file", mine,
                   *SAVE, "--out", root / "aa")
    assert proc.returncode == 0, describe(proc)
    return Saved(root, baseline, mine)


def _copy(saved: Saved, name: str, impl_file: Path | None = None) -> Path:
    """A copy of the baseline; ``impl_file``: the file its configuration names instead (as if
    the user's file had been edited since; the copy stored in code.tar.gz stays as it was)."""
    copy = saved.root / name
    shutil.copytree(saved.baseline, copy)
    if impl_file is not None:
        meta = json.loads((copy / "meta.json").read_text(encoding="utf-8"))
        meta["config"]["impl_files"] = [str(impl_file)]
        (copy / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return copy


@pytest.fixture(scope="module")
def changed(saved: Saved) -> Job:
    """The user's file changed: mine does 30 times the work (same result), other is wrong."""
    mine = saved.root / "mine_changed.py"
    mine.write_text(POOL_IMPL.format(mine=SLOW, other=WRONG), encoding="utf-8")
    with ThreadPoolExecutor(max_workers=1) as pool:
        jobs = Jobs(saved.root / "changed-out", pool)
        jobs.add("changed", "check", "--baseline", _copy(saved, "changed", mine),
                 "--remeasure", "1", "--quiet", "--out", "{out}")
        jobs["changed"].proc  # noqa: B018
    return jobs["changed"]


@pytest.fixture(scope="module")
def drifted(saved: Saved) -> Job:
    """Unchanged code against a baseline recorded when unfold ran 10x faster: an A/A check of
    every other case, and a drift the paired re-measurement must see through."""
    baseline = _copy(saved, "drifted")
    for name, columns in (("samples.csv", ["seconds"]), ("results.csv", ["median_ms"])):
        frame = pd.read_csv(baseline / name, keep_default_na=False, na_values=[""])
        frame.loc[frame["impl"] == "unfold", columns] *= 0.1
        frame.to_csv(baseline / name, index=False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        jobs = Jobs(saved.root / "drifted-out", pool)
        # (a bar of 1.5 keeps a tiny case's process-to-process noise out; a relative --out,
        # as in .ci/run: the stored code runs in a directory below it)
        jobs.add("drifted", "check", "--baseline", baseline, "--threshold", "0.5", "--quiet",
                 "--out", "{relout}",
                 env={"GITHUB_STEP_SUMMARY": str(saved.root / "step-summary.md")})
        jobs["drifted"].proc  # noqa: B018
    return jobs["drifted"]


@pytest.mark.gate
def test_unchanged_code_passes_its_own_baseline(saved: Saved, drifted: Job) -> None:
    proc = drifted.proc
    assert proc.returncode == 0, describe(proc)
    assert "PASS" in proc.stdout
    check_dir = next(drifted.out.iterdir())
    for name in ("check.md", "compare.csv", "compare.html", "compare.png"):
        assert (check_dir / name).stat().st_size > 0
    summary = (saved.root / "step-summary.md").read_text(encoding="utf-8")
    assert "## layerbench check: PASS" in summary


def test_a_slower_implementation_fails_after_re_measurement(saved: Saved, changed: Job) -> None:
    proc = changed.proc
    assert proc.returncode == 1, describe(proc)
    flagged = [line for line in proc.stdout.splitlines()
               if line.startswith("REGRESSION pool/mine")]
    assert flagged, proc.stdout
    assert all("confirmed by 1 re-measurement(s) against the baseline's code" in line
               for line in flagged), flagged
    check_dir = next(changed.out.iterdir())
    stored = check_dir / "baseline-code" / "impl_files" / "0_mine.py"
    assert stored.read_text(encoding="utf-8") == POOL_IMPL.format(mine=GOOD, other=GOOD)
    # the baseline's copy of the file, then the changed file, timed one after the other
    for run, path in (("baseline-1", stored), ("remeasure-1", saved.root / "mine_changed.py")):
        meta = json.loads((check_dir / run / "meta.json").read_text(encoding="utf-8"))
        assert [Path(f) for f in meta["config"]["impl_files"]] == [path.resolve()], run
    frame = pd.read_csv(check_dir / "compare.csv")
    ratios = frame.loc[(frame["verdict"] == "slower") & (frame["impl"] == "mine"), "ratio"]
    assert not ratios.empty and all(r > 3.0 for r in ratios)


def test_a_result_that_became_wrong_always_fails(changed: Job) -> None:
    proc = changed.proc
    assert proc.returncode == 1, describe(proc)
    wrong = [line for line in proc.stdout.splitlines() if line.startswith("REGRESSION pool/other")]
    assert wrong and all("correctness changed" in line for line in wrong), proc.stdout


@pytest.mark.parametrize(("name", "words"), [("missing", "not a baseline"),
                                             ("other-layer", "not in the baseline"),
                                             ("impl-file-alone", "--save-baseline"),
                                             ("unknown-layer", "nolayer")])
def test_bad_check_input_exits_2(saved: Saved, tmp_path: Path, name: str, words: str) -> None:
    baseline = saved.baseline
    args = {"missing": ("--baseline", baseline.parent / "nothing"),
            "other-layer": ("--baseline", baseline, "--layer", "conv"),
            "impl-file-alone": ("--baseline", baseline, "--impl-file", saved.mine),
            "unknown-layer": ("--baseline", baseline, "--layer", "nolayer")}[name]
    assert words in one_line_error(invoke("check", *args, "--out", tmp_path))
    assert not list(tmp_path.iterdir())


@pytest.mark.gate
def test_a_drifted_baseline_passes_against_its_own_code(drifted: Job) -> None:
    proc = drifted.proc
    assert proc.returncode == 0, describe(proc)
    check_dir = next(drifted.out.iterdir())
    frame = pd.read_csv(check_dir / "compare.csv", keep_default_na=False)
    remeasured = frame[frame["note"].str.contains("re-measurement")]
    assert "unfold" in set(remeasured["impl"]), frame["note"]
    assert remeasured["note"].str.startswith("did not reproduce in re-measurement(s) against "
                                             "the baseline's code").all(), remeasured["note"]
    for i in (1, 2):  # both rounds timed the stored code, unpacked
        meta = json.loads((check_dir / f"baseline-{i}" / "meta.json").read_text())
        assert Path(meta["machine"]["code_root"]) == (check_dir / "baseline-code").resolve()


def test_noise_pools_more_a_a_runs_into_a_baseline(tmp_path: Path) -> None:
    medians = [1.0, 1.5, 1.0, 1.5]  # a case that moves between two states
    runs = [fake_run(tmp_path / f"r{i}", [FakeCase("builtin", seconds=[1e-3] * 5),
                                          FakeCase("loops", seconds=[ms * 1e-2] * 5)])
            for i, ms in enumerate(medians)]
    (runs[0] / "noise.csv").write_text("stale", encoding="utf-8")
    proc = invoke("noise", "--baseline", runs[0], *runs[1:])
    assert proc.returncode == 0, describe(proc)
    assert "from 4 runs" in proc.stdout
    noise = load_noise(runs[0], "absolute")
    key = ("conv", "loops", "none", "cpu", "float32", "fwd", "N1")
    assert noise[key] == pytest.approx(float(np.std(np.log(medians), ddof=1)))
    assert "not a run directory" in one_line_error(invoke("noise", "--baseline", runs[0],
                                                          tmp_path / "nothing"))

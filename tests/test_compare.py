"""Comparing runs: statistics against hand-computed values, verdicts on fabricated runs, files."""

from __future__ import annotations

import math
import re
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports import stats
from reports.compare import COLUMNS, compare_runs
from reports.compare_report import write_comparison
from reports.schema import RunDataError
from reports.stats import (
    classify,
    geomean,
    mann_whitney_greater,
    ratio_ci,
    relative_noise,
)
from tests._runs import MACHINE, FakeCase, fake_run, noisy

# --- statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), [(3, 3), (5, 4), (10, 12), (2, 30)])
def test_mwu_fully_separated_is_one_over_binomial(n: int, m: int) -> None:
    a, b = np.arange(n, dtype=float), np.arange(n, n + m, dtype=float)
    assert mann_whitney_greater(a, b) == pytest.approx(1 / comb(n + m, n), rel=1e-12)
    assert mann_whitney_greater(b, a) == pytest.approx(1.0)


def test_mwu_exact_small_tables() -> None:
    # n = m = 3: counts of U = 0..9 over the 20 orderings are 1 1 2 3 3 3 3 2 1 1; U_b = 8.
    assert mann_whitney_greater([1, 2, 4], [3, 5, 6]) == pytest.approx(2 / 20)
    # n = m = 2: counts of U = 0..4 are 1 1 2 1 1; U_b = 3.
    assert mann_whitney_greater([1, 3], [2, 4]) == pytest.approx(2 / 6)
    assert math.isnan(mann_whitney_greater([], [1.0]))


def test_mwu_normal_approximation_with_ties() -> None:
    # Ranks of 1 2 2 2 3 3 4 4 are 1, 3, 3, 3, 5.5, 5.5, 7.5, 7.5: b gets 23.5, U_b = 13.5.
    # Variance 4*4/12 * (9 - (24 + 6 + 6) / 56); continuity correction 0.5.
    sd = math.sqrt(16 / 12 * (9 - 36 / 56))
    expected = 0.5 * math.erfc((13.5 - 8 - 0.5) / sd / math.sqrt(2))
    assert mann_whitney_greater([1, 2, 2, 3], [2, 3, 4, 4]) == pytest.approx(expected)
    assert expected == pytest.approx(0.0671, abs=5e-4)
    assert mann_whitney_greater([5, 5, 5], [5, 5]) == 1.0  # all tied: no evidence


def test_mwu_exact_and_normal_agree_for_moderate_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 40), rng.normal(0.4, 1, 40)
    exact = mann_whitney_greater(a, b)
    monkeypatch.setattr(stats, "EXACT_MAX_PAIRS", 0)
    assert mann_whitney_greater(a, b) == pytest.approx(exact, abs=2e-3)


def test_ratio_ci_contains_the_true_ratio_and_is_deterministic() -> None:
    a, b = noisy(1e-3, 40, 0.05, seed=1), noisy(1.5e-3, 40, 0.05, seed=2)
    lo, hi = ratio_ci(a, b)
    assert lo < 1.5 < hi and hi / lo < 1.1
    assert lo <= np.median(b) / np.median(a) <= hi
    assert ratio_ci(a, b) == (lo, hi)
    assert ratio_ci(a, b, seed=1) != (lo, hi)
    assert all(math.isnan(v) for v in ratio_ci([], b))


def test_geomean_and_noise() -> None:
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert geomean([2.0, math.nan, -1.0, 8.0]) == pytest.approx(4.0)
    assert math.isnan(geomean([]))
    assert relative_noise([1, 2, 3, 4, 5]) == pytest.approx((4 - 2) / 2 / 3)
    assert relative_noise([7.0]) == 0.0


@pytest.mark.parametrize(("ratio", "p_slower", "p_faster", "noise", "verdict"), [
    (1.5, 1e-4, 1.0, 0.01, "slower"),
    (1.5, 0.05, 1.0, 0.01, "suspicious"),  # big change, not significant
    (1.05, 1e-9, 1.0, 0.01, "same"),  # significant, too small to matter
    (1.25, 1e-9, 1.0, 0.10, "same"),  # within 3 x noise
    (0.5, 1.0, 1e-4, 0.01, "faster"),
    (0.5, 1.0, 0.2, 0.01, "suspicious"),
    (1.0, 0.5, 0.5, math.nan, "same"),
    (math.nan, math.nan, math.nan, math.nan, "same"),
])
def test_classify(ratio: float, p_slower: float, p_faster: float, noise: float,
                  verdict: str) -> None:
    assert classify(ratio, p_slower, p_faster, noise) == verdict


# --- fabricated runs --------------------------------------------------------------------------

BASE_S = {"builtin": 1e-3, "im2col": 2e-3, "einsum": 3e-3}
SIZES = ("N1", "N8")


def _cases(factor: dict[str, float] | None = None, seed: int = 0, spread: float = 0.02,
           n: int = 30, device: str = "cpu", scale: float = 1.0) -> list[FakeCase]:
    """builtin, im2col, einsum (n samples) and loops (3 samples) at two sizes."""
    factor = factor or {}
    cases = []
    for i, size in enumerate(SIZES):
        for j, impl in enumerate(BASE_S):
            median = BASE_S[impl] * (i + 1) * factor.get(impl, 1.0) * scale
            cases.append(FakeCase(impl, size, noisy(median, n, spread, seed + 10 * i + j),
                                  device=device))
        median = 0.5 * (i + 1) * factor.get("loops", 1.0) * scale
        cases.append(FakeCase("loops", size, noisy(median, 3, 0.02, seed + 10 * i + 9),
                              device=device))
    return cases


def _verdicts(comparison, impl: str) -> set[str]:
    return set(comparison.frame.loc[comparison.frame["impl"] == impl, "verdict"])


def test_run_against_itself(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", _cases())
    c = compare_runs([a, a])
    assert c.basis == "absolute" and c.regressions == 0
    assert set(c.frame["verdict"]) == {"same"}
    assert np.allclose(c.frame["ratio"], 1.0)
    assert list(c.frame.columns) == COLUMNS
    assert len(c.frame) == 2 * 4  # builtin rows count in the absolute basis
    assert np.allclose(c.geomeans["geomean_ratio"], 1.0)


def test_twice_slower_is_a_regression_and_twice_faster_is_not(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", _cases())
    slow = fake_run(tmp_path / "slow", _cases({"im2col": 2.0}, seed=100))
    fast = fake_run(tmp_path / "fast", _cases({"im2col": 0.5}, seed=100))
    c = compare_runs([a, slow])
    assert _verdicts(c, "im2col") == {"slower"} and c.regressions == 2
    assert _verdicts(c, "builtin") == {"same"} and _verdicts(c, "einsum") == {"same"}
    row = c.frame[c.frame["impl"] == "im2col"].iloc[0]
    assert row["ci_lo"] < row["ratio"] < row["ci_hi"] and row["p_value"] < 1e-6
    geo = c.geomeans.set_index("impl")["geomean_ratio"]
    assert geo["im2col"] == pytest.approx(2.0, rel=0.05)
    c = compare_runs([a, fast])
    assert _verdicts(c, "im2col") == {"faster"} and c.regressions == 0


def test_a_whole_size_that_moved_alike_is_the_machine_not_the_code(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", _cases())
    everything = fake_run(tmp_path / "all", _cases({"builtin": 1.7, "im2col": 1.7,
                                                    "einsum": 1.7, "loops": 1.7}, seed=100))
    c = compare_runs([a, everything])
    timed = c.frame[c.frame["impl"] != "loops"]  # (the loops' 3 samples: suspicious anyway)
    assert set(timed["verdict"]) == {"suspicious"} and c.regressions == 0
    assert timed["note"].str.contains("moved alike").all()
    # one implementation that moved with the builtin still standing: slower
    one = fake_run(tmp_path / "one", _cases({"im2col": 1.7}, seed=100))
    assert _verdicts(compare_runs([a, one]), "im2col") == {"slower"}


def test_small_change_counts_only_when_noise_is_low(tmp_path: Path) -> None:
    tight = [fake_run(tmp_path / f"t{s}", _cases({"einsum": f}, seed=s, spread=0.01, n=50))
             for s, f in ((0, 1.0), (100, 1.12))]
    assert _verdicts(compare_runs(tight), "einsum") == {"slower"}
    noisy_runs = [fake_run(tmp_path / f"n{s}", _cases({"einsum": f}, seed=s, spread=0.2, n=50))
                  for s, f in ((0, 1.0), (100, 1.12))]
    c = compare_runs(noisy_runs)
    assert "slower" not in _verdicts(c, "einsum") and c.regressions == 0
    assert (c.frame.loc[c.frame["impl"] == "einsum", "threshold_used"] > 0.3).all()


def test_three_samples_twice_slower_is_suspicious(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", _cases())
    b = fake_run(tmp_path / "b", _cases({"loops": 2.0}, seed=100))
    c = compare_runs([a, b])
    loops = c.frame[c.frame["impl"] == "loops"]
    assert set(loops["verdict"]) == {"suspicious"} and c.regressions == 0
    assert np.allclose(loops["p_value"], 1 / comb(6, 3))  # fully separated, 3 vs 3
    assert loops["note"].str.contains("not significant").all()


def test_correctness_changes(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", _cases())
    cases = _cases(seed=100)
    cases[1].status, cases[1].reason = "incorrect", "rel_err 0.3 > rtol"
    b = fake_run(tmp_path / "b", cases)
    c = compare_runs([a, b])
    row = c.frame[(c.frame["impl"] == "im2col") & (c.frame["case"] == "N1")].iloc[0]
    assert row["verdict"] == "correctness changed" and row["regression"]
    assert "ok -> incorrect" in row["note"] and c.regressions == 1
    back = compare_runs([b, a])  # incorrect -> ok: reported, not a failure
    row = back.frame[(back.frame["impl"] == "im2col") & (back.frame["case"] == "N1")].iloc[0]
    assert row["verdict"] == "correctness changed" and back.regressions == 0


def test_new_missing_and_untimed_cases(tmp_path: Path) -> None:
    cases_a = _cases()
    cases_a.append(FakeCase("loops", "N64", [], status="skipped", reason="budget"))
    a = fake_run(tmp_path / "a", cases_a)
    cases = [c for c in _cases(seed=100) if not (c.impl == "einsum" and c.case == "N8")]
    cases.append(FakeCase("im2col", "N64", noisy(1e-2, 10)))
    cases.append(FakeCase("loops", "N64", [], status="skipped", reason="budget"))
    cases[0] = FakeCase("builtin", "N1", [], status="oom", reason="out of memory")
    b = fake_run(tmp_path / "b", cases)
    c = compare_runs([a, b])
    by = c.frame.set_index(["impl", "case"])["verdict"]
    assert by["im2col", "N64"] == "new" and by["einsum", "N8"] == "missing"
    assert by["builtin", "N1"] == "suspicious"  # ok -> oom: worth a look, not a failure
    assert by["loops", "N64"] == "same"
    assert "not timed" in c.frame.set_index(["impl", "case"]).loc[("loops", "N64"), "note"]
    assert c.regressions == 0


def test_relative_basis_compares_a_cpu_run_with_a_cuda_run(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "cpu", _cases())
    gpu = {**MACHINE, "host": "gpubox", "gpus": [{"index": 0, "name": "NVIDIA H100"}]}
    b = fake_run(tmp_path / "cuda", _cases(device="cuda", scale=0.1), machine=gpu)
    c = compare_runs([a, b])
    assert c.basis == "relative" and c.regressions == 0
    assert set(c.frame["verdict"]) == {"same"}
    assert "builtin" not in set(c.frame["impl"])  # the unit of the basis, not a verdict
    assert set(c.frame["device"]) == {"cpu->cuda"}
    assert np.allclose(c.frame["ratio"], 1.0)
    assert np.allclose(c.frame["median_b_ms"] / c.frame["median_a_ms"], 0.1)
    assert any("0.1x" in note for note in c.notes)
    with pytest.raises(RunDataError, match=r"no cases in common.*device cpu"):
        compare_runs([a, b], basis="absolute")


def test_relative_basis_without_builtin(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", _cases())
    partial = fake_run(tmp_path / "p", [c for c in _cases(seed=100)
                                        if not (c.impl == "builtin" and c.case == "N8")])
    c = compare_runs([a, partial], basis="relative")
    n8 = c.frame[c.frame["case"] == "N8"]
    assert n8["note"].str.contains("no timed eager builtin").all()
    assert np.isfinite(c.frame.loc[c.frame["case"] == "N1", "ratio"]).all()
    none = fake_run(tmp_path / "n", [c for c in _cases(seed=100) if c.impl != "builtin"])
    with pytest.raises(RunDataError, match="relative to the builtin"):
        compare_runs([a, none], basis="relative")


def test_bad_input_raises_a_clear_error(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", _cases())
    with pytest.raises(RunDataError, match="at least two"):
        compare_runs([a])
    with pytest.raises(RunDataError, match="not a run directory"):
        compare_runs([a, tmp_path / "nowhere"])
    with pytest.raises(RunDataError, match="basis"):
        compare_runs([a, a], basis="bogus")
    other = fake_run(tmp_path / "attn", [FakeCase("builtin", seconds=noisy(1e-3),
                                                  layer="attention")])
    with pytest.raises(RunDataError, match=r"no cases in common.*conv.*attention"):
        compare_runs([a, other])
    corrupt = fake_run(tmp_path / "corrupt", _cases())
    (corrupt / "results.csv").write_text("run_id,layer\n\x00garbage\n", encoding="utf-8")
    with pytest.raises(RunDataError, match=r"results\.csv"):
        compare_runs([a, corrupt])
    bad_samples = fake_run(tmp_path / "bad_samples", _cases())
    (bad_samples / "samples.csv").write_text("layer,seconds\nconv,fast\n", encoding="utf-8")
    with pytest.raises(RunDataError, match=r"samples\.csv: missing column"):
        compare_runs([a, bad_samples])
    no_samples = fake_run(tmp_path / "no_samples", _cases())
    (no_samples / "samples.csv").unlink()
    with pytest.raises(RunDataError, match=r"samples\.csv: missing or empty"):
        compare_runs([a, no_samples])


def test_write_comparison(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", _cases())
    b = fake_run(tmp_path / "b", _cases({"im2col": 2.0, "einsum": 0.5}, seed=100))
    c3 = fake_run(tmp_path / "c", _cases(seed=200))
    c = compare_runs([a, b, c3])
    assert set(c.frame["run_b"]) == {"b", "c"} and set(c.geomeans["run_b"]) == {"b", "c"}
    paths = write_comparison(c, tmp_path / "out")
    assert [p.name for p in paths] == ["compare.csv", "compare.md", "compare.html",
                                       "compare.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    csv = pd.read_csv(paths[0], keep_default_na=False, na_values=[""])
    assert list(csv.columns) == COLUMNS and len(csv) == len(c.frame)
    md = paths[1].read_text(encoding="utf-8")
    assert "## Regressions (2)" in md and "## Improvements (2)" in md
    assert "](compare.png)" in md
    assert md.count("Test CPU, 2 logical cores") == 3  # where each run ran
    page = paths[2].read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page)
    assert "http://" not in page and "https://" not in page
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""``report``, ``compare`` and ``calibrate`` from the command line (in this process): files and
exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from suites import calibration
from tests._cli import Done, describe, invoke, invoke_all, one_line_error
from tests._report import assert_self_contained
from tests._runs import FakeCase, fake_run, noisy

IMPLS = {"builtin": 1e-3, "im2col": 3e-3, "einsum": 2e-3}


def _run(path: Path, slow: dict[str, float] | None = None) -> Path:
    """A conv run of three impls x two sizes; ``slow`` multiplies an impl's times."""
    cases = [FakeCase(impl, case=case, params={"N": n},
                      seconds=noisy(t * n * (slow or {}).get(impl, 1.0), n=40, seed=n))
             for impl, t in IMPLS.items() for case, n in (("N1", 1), ("N8", 8))]
    return fake_run(path, cases)


def _broken_runs(root: Path) -> dict[str, Path]:
    """Run directories that are wrong in one way each."""
    runs = {name: _run(root / name) for name in ("corrupt-csv", "bad-schema", "empty",
                                                 "bad-meta")}
    (runs["corrupt-csv"] / "results.csv").write_bytes(b"\x00\xff garbage\n\x01,\x02\n" * 20)
    meta = json.loads((runs["bad-schema"] / "meta.json").read_text())
    (runs["bad-schema"] / "meta.json").write_text(json.dumps({**meta, "schema_version": 99}))
    header = (runs["empty"] / "results.csv").read_text().splitlines()[0]
    (runs["empty"] / "results.csv").write_text(header + "\n")
    (runs["bad-meta"] / "meta.json").write_text("{not json")
    runs["other-layer"] = fake_run(root / "other-layer",
                                   [FakeCase("builtin", layer="rnn", seconds=noisy(1e-3))])
    runs["missing"] = root / "does-not-exist"
    return runs


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("report-cli")


@pytest.fixture(scope="module")
def jobs(root: Path) -> dict[str, Done]:
    base, same = _run(root / "base"), _run(root / "same")
    slower = _run(root / "slower", slow={"im2col": 2.0})
    broken = _broken_runs(root / "broken")
    commands: dict[str, tuple[object, ...]] = {
        "report": ("report", base),
        "compare-same": ("compare", base, same, "--out", "{out}"),
        "compare-slower": ("compare", base, slower, "--out", "{out}"),
        "compare-three": ("compare", base, same, slower, "--out", "{out}"),
        "compare-one-run": ("compare", base, "--out", "{out}"),
        "compare-bad-basis": ("compare", base, same, "--basis", "sideways"),
        "calibrate-bad-device": ("calibrate", "--device", "tpu"),
    }
    for name, path in broken.items():
        if name != "other-layer":
            commands[f"report-{name}"] = ("report", path)
        commands[f"compare-{name}"] = ("compare", base, path, "--out", "{out}")
    return invoke_all(root / "out", commands)


def test_report_command_builds_the_report(jobs: dict[str, Done]) -> None:
    proc = jobs["report"].proc
    assert proc.returncode == 0, describe(proc)
    run = Path(proc.stdout.splitlines()[0]).parent
    assert_self_contained((run / "report.html").read_text(encoding="utf-8"))
    assert (run / "report.md").stat().st_size > 0
    assert list((run / "plots").glob("conv_*.svg")) or list((run / "plots").glob("conv_*.png"))


def test_a_run_against_an_equivalent_run_passes(jobs: dict[str, Done]) -> None:
    proc, out = jobs["compare-same"].proc, jobs["compare-same"].out
    assert proc.returncode == 0, describe(proc)
    for name in ("compare.csv", "compare.md", "compare.html", "compare.png"):
        assert (out / name).stat().st_size > 0, name
    assert_self_contained((out / "compare.html").read_text(encoding="utf-8"))
    assert "REGRESSION" not in proc.stdout


def test_an_impl_made_2x_slower_is_a_regression(jobs: dict[str, Done]) -> None:
    proc, out = jobs["compare-slower"].proc, jobs["compare-slower"].out
    assert proc.returncode == 1, describe(proc)
    flagged = [line for line in proc.stdout.splitlines() if line.startswith("REGRESSION")]
    assert len(flagged) == 2 and all("conv/im2col" in line for line in flagged), proc.stdout
    summary = (out / "compare.md").read_text(encoding="utf-8")
    assert "regression" in summary.lower()


def test_three_runs_compare_each_with_the_first(jobs: dict[str, Done]) -> None:
    proc, out = jobs["compare-three"].proc, jobs["compare-three"].out
    assert proc.returncode == 1, describe(proc)  # the third run regressed
    frame = pd.read_csv(out / "compare.csv")
    verdicts = frame.groupby("run_b")["verdict"].agg(set)
    assert verdicts["same"] == {"same"}
    assert "slower" in verdicts["slower"]
    assert set(frame["run_a"]) == {"base"}


BAD = ["report-corrupt-csv", "report-bad-schema", "report-empty", "report-bad-meta",
       "report-missing", "compare-corrupt-csv", "compare-bad-schema", "compare-empty",
       "compare-bad-meta", "compare-missing", "compare-other-layer", "compare-one-run",
       "compare-bad-basis", "calibrate-bad-device"]
WORDS = {"report-bad-schema": "schema version 99", "report-empty": "no results",
         "report-missing": "not a run directory", "report-bad-meta": "meta.json",
         "compare-other-layer": "no cases in common", "calibrate-bad-device": "tpu",
         "compare-corrupt-csv": "results.csv"}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_exits_2_with_one_clear_line(jobs: dict[str, Done],
                                               name: str) -> None:
    assert WORDS.get(name, "") in one_line_error(jobs[name].proc)
    assert not list(jobs[name].out.iterdir())  # nothing written


def test_calibrate_measures_and_caches_the_ceilings(root: Path) -> None:
    env = {"LAYERBENCH_CACHE_DIR": str(root / "cache")}
    proc = invoke("calibrate", env=env)
    assert proc.returncode == 0, describe(proc)
    cached = list((root / "cache" / "calibration").glob("*.json"))
    assert len(cached) == 1
    ceilings = json.loads(cached[0].read_text(encoding="utf-8"))
    assert set(ceilings["matmul_gflops"]) == {"float32", "float64", "bfloat16", "float16"}
    for dtype, gflops in ceilings["matmul_gflops"].items():
        assert 0.1 < gflops < 1e6, (dtype, gflops)  # any CPU, never zero or absurd
    assert 0.1 < ceilings["copy_gbps"] < 1e4
    assert ceilings["load_before"] >= 0  # the 1-minute load as the measurement started
    assert str(cached[0]) in proc.stdout
    # a second call reads the cache instead of measuring again
    again = invoke("calibrate", env=env)
    assert again.returncode == 0, describe(again)
    assert json.loads(cached[0].read_text(encoding="utf-8")) == ceilings
    assert f"measured {ceilings['measured_at']}" in again.stdout


def test_a_calibration_on_a_busy_machine_is_flagged() -> None:
    quiet = {"device": "cpu", "load_before": 0.1}
    assert calibration.busy_warning(quiet) is None
    assert calibration.busy_warning({"device": "cuda", "load_before": None}) is None
    warning = calibration.busy_warning({**quiet, "load_before": 1.7})
    assert warning is not None and "1.70" in warning and "calibrate --force" in warning

"""The pytest-benchmark suite in tests/perf: collected only when named, and it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from tests import conftest
from tests._cli import ROOT, cli_env, describe


def test_perf_is_left_out_of_the_default_run() -> None:
    default = SimpleNamespace(args=[str(ROOT / "tests")])
    named = SimpleNamespace(args=[str(ROOT / "tests" / "perf" / "test_layers.py") + "::x"])
    assert conftest.pytest_ignore_collect(conftest.PERF, default) is True
    assert conftest.pytest_ignore_collect(conftest.PERF, named) is None
    assert conftest.pytest_ignore_collect(ROOT / "tests" / "x", default) is None


def test_perf_runs_a_correct_layer_under_the_benchmark_fixture(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/perf", "-q", "-p", "no:cacheprovider",
         "-k", "pool and builtin", "--benchmark-max-time=0.05",
         f"--benchmark-json={tmp_path / 'bench.json'}"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, describe(proc)
    assert "3 passed" in proc.stdout
    report = (tmp_path / "bench.json").read_text(encoding="utf-8")
    assert '"layer": "pool"' in report and '"flops":' in report

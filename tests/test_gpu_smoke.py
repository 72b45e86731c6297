"""benchmarks/gpu_smoke.sh: what can be checked without a GPU (its syntax; its OOM
implementation gives an ``oom`` row from a worker on the CPU as it must on a GPU)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests._cli import describe, only_run_dir, read_csv, run_cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_smoke.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_greedy_implementation_is_an_oom_row_and_the_run_goes_on(tmp_path: Path) -> None:
    proc = run_cli("bench", "conv", "--impl", "builtin,greedy", "--isolate", "--impl-file",
                   ROOT / "benchmarks" / "gpu_oom_impl.py", "--size", "N=1,C_in=1,C_out=2",
                   "--min-time", "0.01", "--max-time", "0.05", "--quiet", "--no-report",
                   "--out", tmp_path)
    assert proc.returncode == 0, describe(proc)  # out of memory is a limit, not a failure
    _, rows = read_csv(only_run_dir(tmp_path) / "results.csv")
    status = {r["impl"]: r["status"] for r in rows}
    assert status == {"builtin": "ok", "greedy": "oom"}, rows

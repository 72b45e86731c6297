"""Run the command line: in this process (``invoke``: fast, for error paths and small runs) or
as a user does, ``python cli.py ...`` in the project root (``run_cli``: end to end)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Device ceilings for the tests' runs: fixed figures seeded by conftest.py, so roofline fractions
# are exact and no test run spends seconds calibrating (test_calibrate measures for real).
TEST_CACHE = ROOT / ".cache" / "test-cache"
TEST_CEILINGS = {"device": "cpu", "device_name": "test", "torch": "", "threads": 0,
                 "matmul_gflops": {"float32": 400.0, "float64": 200.0, "bfloat16": 2000.0,
                                   "float16": 50.0},
                 "copy_gbps": 25.0, "measured_at": "test", "measure_s": 0.0}


@dataclass(frozen=True)
class Outcome:
    """What a command run in this process printed, and its exit code."""

    returncode: int
    stdout: str
    stderr: str


def invoke(*args: object, env: dict[str, str] | None = None) -> Outcome:
    """``python cli.py ARGS`` in this process: the same ``main`` (exit codes, one-line errors),
    with registrations (``--impl-file``) and the thread count (``--threads``) restored
    afterwards; ``env``: variables set meanwhile."""
    import torch
    from click.testing import CliRunner

    import cli
    from impls import REGISTRY

    code, threads = 0, torch.get_num_threads()
    with (CliRunner().isolation(env={"COLUMNS": "160", **(env or {})}) as (out, err, _),
          REGISTRY.scoped()):
        try:
            cli.main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            torch.set_num_threads(threads)
        sys.stdout.flush()
        sys.stderr.flush()
        return Outcome(code, out.getvalue().decode(), err.getvalue().decode())


@dataclass(frozen=True)
class Done:
    """A command run in this process (``proc``), and its own ``--out`` folder."""

    proc: Outcome
    out: Path

    @property
    def run_dir(self) -> Path:
        return only_run_dir(self.out)


def invoke_all(root: Path, commands: dict[str, tuple[object, ...]]) -> dict[str, Done]:
    """Each of ``commands`` in this process, in order; ``"{out}"`` in its arguments becomes a
    new empty folder of its own under ``root``."""
    done = {}
    for name, args in commands.items():
        out = root / name
        out.mkdir(parents=True)
        done[name] = Done(invoke(*(out if a == "{out}" else a for a in args)), out)
    return done


def cli_env() -> dict[str, str]:
    # Wide, fixed console so tables are never wrapped; the default inductor cache (the
    # project's) is kept so repeat runs do not compile again.
    return {**os.environ, "COLUMNS": "160", "LAYERBENCH_CACHE_DIR": str(TEST_CACHE)}


def run_cli(*args: object, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=ROOT,
                          env={**cli_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def only_run_dir(out: Path) -> Path:
    """The single run directory a bench wrote under ``--out``."""
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def describe(proc: subprocess.CompletedProcess[str] | Outcome) -> str:
    """What to show when an assertion on a command fails."""
    return (f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}"
            f"\n--- stderr ---\n{proc.stderr[-3000:]}")


# Commands run concurrently (most of their time is importing torch); each test waits only for
# the command it checks.
@dataclass
class Job:
    future: Future[subprocess.CompletedProcess[str]]
    out: Path

    @property
    def proc(self) -> subprocess.CompletedProcess[str]:
        return self.future.result()

    @property
    def run_dir(self) -> Path:
        return only_run_dir(self.out)


class Jobs:
    def __init__(self, root: Path, pool: ThreadPoolExecutor) -> None:
        self.root, self.pool, self.jobs = root, pool, {}

    def add(self, name: str, *args: object, env: dict[str, str] | None = None) -> None:
        out = self.root / name
        out.mkdir(parents=True)
        # "{out}": the job's output directory; "{relout}": the same, relative to the project
        places = {"{out}": str(out), "{relout}": os.path.relpath(out, ROOT)}
        args = tuple(places.get(a, a) if isinstance(a, str) else a for a in args)
        self.jobs[name] = Job(self.pool.submit(run_cli, *args, env=env), out)

    def __getitem__(self, name: str) -> Job:
        return self.jobs[name]


def one_line_error(proc: subprocess.CompletedProcess[str] | Outcome) -> str:
    """The single ``error: ...`` line of a command that exited 2, checked to be alone."""
    assert proc.returncode == 2, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, describe(proc)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]

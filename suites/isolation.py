"""Where a case runs: in this process, or in a worker process that may hang, crash or be killed.

An implementation under test can be stuck in one long native call, corrupt the heap (torch 2.13's
inductor does, for one conv backward on this CPU), call ``os._exit`` or be killed by the OOM
killer. In a worker process that costs the worker, not the run: the case becomes a ``timeout`` or
``error`` row and a fresh worker takes the next case. In this process, the time limit is a signal
that interrupts Python code (and sleeps), but not one long native call.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from suites.config import BenchConfig

WORKER_START_S = 300.0  # importing torch and the user's files; generous on a loaded machine


@dataclass(frozen=True)
class Lost:
    """A case that did not come back: ``timeout``, or ``error`` when its worker died."""

    status: str
    reason: str


class CaseTimeout(BaseException):
    """Raised in this process when a case overruns (a BaseException: no ``except Exception``
    inside the case may swallow it)."""


Target = Callable[[Any, BenchConfig, Path | None], Any]  # (case, config, profile_root) -> result


class InProcess:
    """Run each case here, under a signal-based time limit (main thread only)."""

    def __init__(self, config: BenchConfig, target: Target) -> None:
        self.config, self.target = config, target

    def __call__(self, case: Any, profile_root: Path | None) -> Any:
        try:
            with _alarm(self.config.timeout_s):
                return self.target(case, self.config, profile_root)
        except CaseTimeout:
            return Lost("timeout", timeout_reason(self.config.timeout_s, isolated=False))

    def close(self, kill: bool = False) -> None:
        pass


class Isolated:
    """Run each case in a worker process, started on first use and replaced when lost."""

    def __init__(self, config: BenchConfig, target: Target) -> None:
        self.config, self.target = config, target
        self._context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        self._process: Any = None
        self._conn: Connection | None = None

    def __call__(self, case: Any, profile_root: Path | None) -> Any:
        if self._process is None or not self._process.is_alive():
            self._start()
        assert self._conn is not None
        self._conn.send((case, profile_root))
        if not self._conn.poll(self.config.timeout_s):
            self._stop(kill=True)
            return Lost("timeout", timeout_reason(self.config.timeout_s, isolated=True))
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            return Lost("error", self._death())

    def close(self, kill: bool = False) -> None:
        self._stop(kill=kill)

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child, self.config,
                                                                   self.target), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(WORKER_START_S):
            self._stop(kill=True)
            raise RuntimeError(f"the worker process did not start within {WORKER_START_S:.0f} s")
        try:
            ready = parent.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"the worker process failed to start: {self._death()}") from None
        if ready != "ready":
            self._stop(kill=True)
            raise RuntimeError(f"the worker process failed to start: {ready}")

    def _death(self) -> str:
        """Why the worker is gone, e.g. ``killed by signal SIGABRT``; forgets the worker."""
        process, self._process = self._process, None
        process.join(5.0)
        code = process.exitcode
        if code is None:
            process.kill()
            process.join()
            return "the worker process stopped answering"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"the worker process was killed by {signal.Signals(-code).name}"
            return f"the worker process was killed by signal {-code}"
        return f"the worker process exited with code {code}"

    def _stop(self, kill: bool) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()  # the worker's recv() ends: it returns
        if process is not None:
            if kill:
                process.kill()
            process.join(10.0)
            if process.is_alive():
                process.kill()
                process.join()


def executor(config: BenchConfig, target: Target) -> InProcess | Isolated:
    return Isolated(config, target) if config.isolate else InProcess(config, target)


def timeout_reason(limit_s: float, isolated: bool) -> str:
    how = "its worker process was killed" if isolated else "interrupted"
    return f"exceeded the {limit_s:g} s limit per case (--timeout); {how}"


def _serve(conn: Connection, config: BenchConfig, target: Target) -> None:
    """The worker: set up like the parent, then run cases until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import torch

        from impls import REGISTRY

        if config.threads:
            torch.set_num_threads(config.threads)
        for path in config.impl_files:
            REGISTRY.load_file(path)
    except BaseException as exc:  # the parent reports it
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    conn.send("ready")
    while True:
        try:
            case, profile_root = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(target(case, config, profile_root))


@contextlib.contextmanager
def _alarm(limit_s: float) -> Iterator[None]:
    """Raise ``CaseTimeout`` in this thread after ``limit_s`` (no-op off the main thread)."""
    if limit_s <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

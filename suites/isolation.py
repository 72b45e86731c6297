"""Where a size group runs: in this process, or in a worker process that may hang, crash or die.

An implementation under test can be stuck in one long native call, corrupt the heap (torch 2.13's
inductor does, for one conv backward on this CPU), call ``os._exit`` or be killed by the OOM
killer. In a worker process that costs the worker, not the run: the case becomes a ``timeout`` or
``error`` row and a fresh worker runs the rest of its group again. In this process, the time
limit is a signal that interrupts Python code (and sleeps), but not one long native call.

Either way a case's guard turns ``sys.exit`` inside it into an ``error`` of that case, measures
its peak RSS (``suites.memory``) and watches for a sticky CUDA error (``suites.faults``): a worker
that meets one is replaced before the next case; in this process, every later CUDA case becomes
an ``error`` row without running (its CUDA context is gone) while CPU cases go on. A worker
whose RSS grew past ``suites.memory.worker_rss_limit()`` is replaced after its size group.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from reports.schema import device_kind
from suites.config import BenchConfig
from suites.faults import context_lost, describe, exit_reason
from suites.memory import CaseMemory, rss_bytes, worker_rss_limit

WORKER_START_S = 300.0  # importing torch and the user's files; generous on a loaded machine
EXIT_CONTEXT_LOST = 70  # a worker's exit status after a sticky CUDA error (EX_SOFTWARE)


@dataclass(frozen=True)
class Lost:
    """A case that did not come back: ``timeout``, or ``error`` when its worker died."""

    status: str
    reason: str


class CaseLost(Exception):
    """A case's time ran out in this process: its guard raises this, and the runner records
    the case as ``status`` with ``reason`` while the rest of its group goes on."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class CaseTimeout(BaseException):
    """Raised in this process when a case overruns (a BaseException: no ``except Exception``
    inside the case may swallow it)."""


Guard = Callable[[int], AbstractContextManager[None]]
# (cases of one size group, config, profile_root, guard) -> one result per case
Target = Callable[[list[Any], BenchConfig, Path | None, Guard], list[Any]]


class InProcess:
    """Run each group here; each case under a signal-based time limit (main thread only).

    The limit is per case over everything it does (its check, warm-up and every sample of the
    rounds): the group's guard arms the alarm with what is left of the case's time. After a
    sticky CUDA error (``lost``: the case that met it, and the error) no CUDA case runs here
    again: each is an ``error`` row.
    """

    def __init__(self, config: BenchConfig, target: Target) -> None:
        self.config, self.target = config, target
        self.lost: tuple[Any, BaseException] | None = None

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, group: list[Any], profile_root: Path | None) -> list[Any]:
        if self.lost is not None and _on_cuda(group[0]):
            return [Lost("error", lost_context(*self.lost, "not run")) for _ in group]
        limit = self.config.timeout_s
        spent = [0.0] * len(group)
        memory = CaseMemory(len(group))
        entered: set[int] = set()
        culprit: list[int] = []  # the case of this group that lost the CUDA context

        @contextlib.contextmanager
        def guard(index: int) -> Iterator[None]:
            if self.lost is not None and _on_cuda(group[index]):
                what = "cut short" if index in entered else "not run"
                raise CaseLost("error", lost_context(*self.lost, what))
            entered.add(index)
            left = limit - spent[index]
            if limit > 0 and left <= 0:
                raise CaseLost("timeout", timeout_reason(limit, isolated=False))
            start = time.perf_counter()
            try:
                with _alarm(left if limit > 0 else 0), memory.watching(index):
                    yield
            except CaseTimeout:
                raise CaseLost("timeout", timeout_reason(limit, isolated=False)) from None
            except SystemExit as exc:  # the run goes on (KeyboardInterrupt still stops it)
                raise CaseLost("error", exit_reason(exc)) from None
            except Exception as exc:
                if self.lost is None and context_lost(exc):
                    self.lost = group[index], exc
                    culprit.append(index)
                raise
            finally:
                spent[index] += time.perf_counter() - start

        try:
            results = self.target(group, self.config, profile_root, guard)
        except Exception:
            if not culprit:
                raise
            # the group's clean-up met the lost context (CUDA calls outside any case)
            assert self.lost is not None
            found, spoiled = context_lost(self.lost[1]), lost_context(*self.lost, "result lost")
            return [Lost("error", found if i in culprit and found else spoiled)
                    for i in range(len(group))]
        memory.record(results)
        return results

    def close(self, kill: bool = False) -> None:
        pass


class Isolated:
    """Run each group in a worker process, started on first use and replaced when lost.

    The worker says which case it works on (``("case", i)``, then ``("idle", i)``); the parent
    holds each case to its time limit. A case that overruns or kills the worker is lost (its
    worker killed or gone); so is one that loses the worker's CUDA context (``("lost",
    reason)``, then the worker exits). A fresh worker then runs the group's remaining cases
    again. A worker that grew past ``rss_limit`` bytes (0: no limit) ends after its group.
    """

    def __init__(self, config: BenchConfig, target: Target) -> None:
        self.config, self.target = config, target
        self.rss_limit = worker_rss_limit()
        self._context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        self._process: Any = None
        self._conn: Connection | None = None
        #: told of each case as the worker starts on it (e.g. so that a Dask worker that dies
        #: leaves word of the case it was running)
        self.on_case: Callable[[Any], None] | None = None

    def __call__(self, group: list[Any], profile_root: Path | None) -> list[Any]:
        results: list[Any] = [None] * len(group)
        spent = [0.0] * len(group)
        while pending := [i for i, r in enumerate(results) if r is None]:
            for position, outcome in self._attempt([group[i] for i in pending], profile_root,
                                                   [spent[i] for i in pending]).items():
                results[pending[position]] = outcome
            if all(results[i] is None for i in pending):  # nothing came back: give up on them
                for i in pending:
                    results[i] = Lost("error", "the worker process failed outside any case")
        return results

    def _attempt(self, cases: list[Any], profile_root: Path | None,
                 spent: list[float]) -> dict[int, Any]:
        """Run ``cases`` in the worker; what came back (a lost case included) by position."""
        if self._process is None or not self._process.is_alive():
            self._start()
        assert self._conn is not None
        self._conn.send((cases, profile_root))
        limit, current, since = self.config.timeout_s, None, time.perf_counter()
        while True:
            wait = (max(limit - spent[current] - (time.perf_counter() - since), 0.0)
                    if current is not None else limit)
            if not self._conn.poll(wait):
                self._stop(kill=True)
                if current is None:
                    return {}
                return {current: Lost("timeout", timeout_reason(limit, isolated=True))}
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                death = self._death()
                return {} if current is None else {current: Lost("error", death)}
            kind, payload = message
            if kind == "case":
                current, since = payload, time.perf_counter()
                if self.on_case is not None:
                    self.on_case(cases[current])
            elif kind == "idle":
                spent[payload] += time.perf_counter() - since
                current = None
            elif kind == "lost":  # its CUDA context is gone: no later case may run in it
                self._stop(kill=True)
                return {} if current is None else {current: Lost("error", payload)}
            else:  # "done": every result, and whether the worker grew past its limit
                results, grown = payload
                if grown:
                    self._stop(kill=False)  # the worker ends as its pipe closes
                return dict(enumerate(results))

    def close(self, kill: bool = False) -> None:
        self._stop(kill=kill)

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(
            target=_serve, args=(child, self.config, self.target, self.rss_limit), daemon=True)
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


def lost_context(case: Any, exc: BaseException, what: str) -> str:
    """The reason of a CUDA case that ``what`` (``not run``, ``cut short``, ``result lost``) in
    this process after ``case`` met ``exc``, a sticky CUDA error."""
    return (f"{what}: {'/'.join(map(str, getattr(case, 'key', (case,))))} lost this "
            f"process's CUDA context ({describe(exc, 160)}); every CUDA call here "
            "now fails. Rerun with --isolate: each size group then runs in a worker process, "
            "replaced after such an error")


def _on_cuda(case: Any) -> bool:
    return device_kind(str(getattr(case, "device", ""))) == "cuda"


def _reporting(conn: Connection, memory: CaseMemory) -> Guard:
    """The worker's guard: tell the parent which case the work in it belongs to; measure it;
    after a sticky CUDA error, tell the parent and exit (nothing may run in this process)."""

    @contextlib.contextmanager
    def guard(index: int) -> Iterator[None]:
        conn.send(("case", index))
        try:
            with memory.watching(index):
                yield
        except SystemExit as exc:
            raise CaseLost("error", exit_reason(exc)) from None
        except Exception as exc:
            if lost := context_lost(exc):
                conn.send(("lost", lost))
                os._exit(EXIT_CONTEXT_LOST)  # no clean-up: each CUDA call would fail again
            raise
        finally:
            conn.send(("idle", index))

    return guard


def _serve(conn: Connection, config: BenchConfig, target: Target, rss_limit: int) -> None:
    """The worker: set up like the parent, then run cases until the pipe closes. A group that
    leaves it grown by more than ``rss_limit`` bytes (0: no limit) since it started gets a flag
    per row, and ``done`` tells the parent to replace it."""
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
    start_rss = rss_bytes()
    conn.send("ready")
    while True:
        try:
            cases, profile_root = conn.recv()
        except (EOFError, OSError):
            return
        memory = CaseMemory(len(cases))
        results = target(cases, config, profile_root, _reporting(conn, memory))
        memory.record(results)
        grown = rss_bytes() - start_rss
        recycle = bool(rss_limit) and grown > rss_limit
        if recycle:
            memory.recycled(results, grown, rss_limit)
        conn.send(("done", (results, recycle)))


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

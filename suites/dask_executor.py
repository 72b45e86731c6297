"""The Dask executor: a run's size families as tasks on a Dask distributed cluster.

One task is a size family (``suites.cases.families``: every mode of one layer, device, dtype and
size), so a case is timed in interleaved rounds beside its builtin, on one machine, after its
forward. On the worker the family runs as ``--isolate`` runs it here: each size group in a child
process of the Dask worker (a hard ``--timeout``; a crash costs one case), reused task after
task. A task asks for what its timing needs:

- a CUDA family asks for the worker resource ``GPU`` (start GPU workers with
  ``--resources GPU=1``, one worker per GPU);
- a CPU family holds its machine's timing lock (a ``distributed.Lock`` named after the machine)
  while it runs, so two timed CPU cases never share a machine's cores, however many workers
  the machine runs.

Each task returns its outcomes with the record of the machine it ran on (host, CPU, GPUs,
versions, ceilings measured there); the driver writes the run directory as results arrive.
A worker that dies mid-task is the scheduler's to handle: Dask runs the task again on another
worker and, once ``allowed-failures`` workers died running it, gives up (``KilledWorker``); its
cases then become ``error`` rows naming the last worker's machine. The local cluster allows one
retry; a scheduler of your own says how many it allows, and the run says so when it is not one.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
from distributed import Client, KilledWorker, LocalCluster, Lock, get_worker

from reports.outcome import UsageError
from reports.record import Case
from suites import calibration
from suites.cases import family_key
from suites.config import BenchConfig, ExecutorOptions
from suites.devices import device
from suites.environment import machine_info, machine_key
from suites.executors import Finished
from suites.faults import NOTE_CHARS, describe
from suites.isolation import Isolated, Lost, Target

UNKNOWN = "unknown"  # the machine of cases whose task failed before saying where it ran
PROGRESS = "layerbench-case"  # the event topic of the cases tasks start (see ``_killed``)
CONNECT_S = 10.0  # a scheduler that does not answer within this is bad input
WORKERS_S = 30.0  # ... and so is one that has no worker after this
NO_WORKER_S = 120.0  # a run whose workers all died gives up their tasks after this long
CHECK_S = 5.0  # how often to look for workers while no task ends
#: the local cluster's: workers may start the child processes cases run in, a task is retried
#: once after its worker died, and a dead worker's machine lock is free again within seconds
LOCAL_SETTINGS = {"distributed.worker.daemon": False, "distributed.scheduler.allowed-failures": 1,
                  "distributed.scheduler.locks.lease-timeout": "5s",
                  "distributed.scheduler.locks.lease-validation-interval": "1s"}
DAEMON_FIX = ("start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False in their "
              "environment (or `dask worker --no-nanny`): each runs its cases in a child "
              "process, which a daemonic Dask worker may not start")


@dataclass
class UnitDone:
    """What a task returns: the machine it ran on, each group's outcomes, and the files its
    profiles wrote (path under the run's ``profile/`` -> bytes)."""

    machine: str
    record: dict[str, Any]
    outcomes: list[list[Any]]
    files: dict[str, bytes]
    groups: list[list[Case]] | None = None  # which groups ``outcomes`` are of (None: all)


class Dask:
    """Run size families as Dask tasks, on the scheduler at ``options.address`` or on a local
    cluster of one worker process bound to 127.0.0.1 (on one machine, more would not time
    faster: one CPU case times at a time, and they would share its GPU)."""

    def __init__(self, config: BenchConfig, options: ExecutorOptions, target: Target) -> None:
        self.config, self.target, self.options = config, target, options
        self.machines: dict[str, dict[str, Any]] = {}
        self._cluster: LocalCluster | None = None
        self._futures: list[Any] = []
        self._sources: tuple[tuple[str, str], ...] = ()
        self._deaths: dict[tuple[str, ...], list[str]] = {}  # case key -> where its worker died
        self._abandoned: set[str] = set()  # keys of tasks given up for want of workers
        self._ended = threading.Event()  # set as any task ends
        self._client = self._connect()
        try:
            self._workers = self._check_workers()
        except BaseException:
            self.close()
            raise

    def describe(self) -> dict[str, Any]:
        where = self.options.address or "a local cluster on 127.0.0.1"
        retries = self._allowed_failures
        note = "" if retries == 1 else (
            f"; its scheduler gives a task whose worker died {retries} more tries "
            "(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1: one)")
        if self.options.dashboard and self._cluster is not None:
            note += f"; dashboard {self._cluster.dashboard_link}"
        return {"name": "dask", "scheduler": self._client.scheduler.address,
                "workers": self._workers, "allowed_failures": retries,
                "text": f"Dask: {where}, {self._workers} worker(s){note}"}

    def results(self, groups: list[list[Case]], profile_root: Path | None,
                started: Callable[[Case], None]) -> Iterator[Finished]:
        units: dict[tuple[str, ...], list[list[Case]]] = {}
        for group in groups:
            units.setdefault(family_key(group[0]), []).append(group)
        self._sources = tuple((str(p), Path(p).read_text(encoding="utf-8"))
                              for p in self.config.impl_files)
        pending = {self._submit(unit, profile_root): unit for unit in units.values()}
        for future in self._finished(pending):
            unit = pending.pop(future)
            try:
                if future.key in self._abandoned:
                    raise RuntimeError(f"no Dask worker was left for {NO_WORKER_S:g} s (all "
                                       "died and none came back)")
                done = future.result()
            except KilledWorker as exc:
                lost, rest = self._killed(future.key, unit, exc)
                if rest:  # what was not in flight at a second death: again
                    pending[self._submit(rest, profile_root)] = rest
                done = lost
            except Exception as exc:  # the task failed outside any case: nothing to keep
                reason = f"its Dask task failed: {describe(exc, NOTE_CHARS)}"
                done = UnitDone(UNKNOWN, {}, [[Lost("error", reason)] * len(g) for g in unit], {})
            self._register(done)
            if profile_root is not None:
                for name, data in done.files.items():
                    path = profile_root / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
            groups_done = unit if done.groups is None else done.groups
            for group, outcomes in zip(groups_done, done.outcomes, strict=True):
                started(group[0])
                yield Finished(group, outcomes, done.machine)

    def _finished(self, pending: dict[Any, Any]) -> Iterator[Any]:
        """The futures of ``pending`` as they finish (``pending`` may grow meanwhile); after
        ``NO_WORKER_S`` without a single worker (all died, none came back), every one left,
        abandoned: a run never waits for workers that will not come."""
        alone_since = None
        while pending:
            if done := [f for f in pending if f.done()]:
                alone_since = None
                yield from done
                continue
            self._ended.clear()  # asleep until a task ends: this CPU may be timing cases
            if any(f.done() for f in pending) or self._ended.wait(CHECK_S):
                continue
            now = time.monotonic()
            if self._client.scheduler_info(n_workers=-1)["workers"]:
                alone_since = None
            elif alone_since is None:
                alone_since = now
            elif now - alone_since > NO_WORKER_S:
                for future in list(pending):
                    self._abandoned.add(future.key)
                    future.cancel()
                    yield future
                return

    def _submit(self, unit: list[list[Case]], profile_root: Path | None) -> Any:
        gpu = device(unit[0][0].device).kind != "cpu"
        key = f"layerbench-{'-'.join(family_key(unit[0][0]))}-{uuid.uuid4().hex[:8]}"
        future = self._client.submit(run_unit, self.config, self.target, unit, self._sources,
                                     profile_root is not None, key, pure=False, key=key,
                                     resources={"GPU": 1} if gpu else None)
        future.add_done_callback(lambda _: self._ended.set())
        self._futures.append(future)
        return future

    def _killed(self, key: str, unit: list[list[Case]],
                exc: KilledWorker) -> tuple[UnitDone, list[list[Case]]]:
        """A task whose workers all died. The case each worker was running when it died (its
        last word, a ``PROGRESS`` event) counts a death; a case at its second death becomes an
        ``error`` row naming the machines, and the rest of the task runs again. A task whose
        workers died before saying which case they ran is lost as a whole."""
        starts = [m for _, m in self._client.get_events(PROGRESS) if m["task"] == key]
        last: dict[str, dict[str, Any]] = {}
        for start in starts:
            last[start["worker"]] = start  # the case each worker was running when it died
        for start in last.values():
            case_key = tuple(start["case"])
            self._deaths.setdefault(case_key, []).append(
                f"{start['machine']} ({start['worker']})")
        dead = {k for k, where in self._deaths.items() if len(where) >= 2}
        if last:
            lost = [[c for c in g if c.key in dead] for g in unit]
            rest = [[c for c in g if c.key not in dead] for g in unit]
        else:
            lost, rest = unit, []
        machine = starts[-1]["machine"] if starts else str(
            getattr(exc.last_worker, "host", "") or UNKNOWN)
        lost = [g for g in lost if g]
        outcomes = [[Lost("error", self._death_reason(case, exc)) for case in g] for g in lost]
        return UnitDone(machine, {}, outcomes, {}, groups=lost), [g for g in rest if g]

    def _death_reason(self, case: Case, exc: KilledWorker) -> str:
        where = self._deaths.get(case.key)
        if where:
            return (f"its Dask worker died while running it, {len(where)} times (on "
                    f"{', then '.join(where)}); not run again")
        address = getattr(exc.last_worker, "address", exc.last_worker)
        return (f"lost: {exc.allowed_failures + 1} Dask workers died running its size family "
                f"(last {address}) before saying which case they ran")

    def _register(self, done: UnitDone) -> None:
        """Add what ``done`` says of its machine to ``machines`` (ceilings of more devices)."""
        known = self.machines.setdefault(done.machine, {"key": done.machine})
        ceilings = {**known.get("calibration", {}), **done.record.get("calibration", {})}
        known.update({**done.record, "calibration": ceilings})

    def close(self, kill: bool = False) -> None:
        with contextlib.suppress(Exception):
            if self._futures:
                self._client.cancel(self._futures, force=True)
        with contextlib.suppress(Exception):
            self._client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()
        self._futures, self._cluster = [], None

    def _connect(self) -> Client:
        address = self.options.address
        if address:
            try:
                return Client(address, timeout=CONNECT_S, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise UsageError(f"--scheduler {address}: no Dask scheduler answered within "
                                 f"{CONNECT_S:g} s ({type(exc).__name__})") from None
        gpus = _local_gpus(self.config)
        # for this process's lifetime: the nanny reads them again when it restarts a worker
        dask.config.set(LOCAL_SETTINGS)
        self._cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True,
            host="127.0.0.1", resources={"GPU": gpus} if gpus else None,
            silence_logs=logging.CRITICAL,  # their shutdown is noisy; task errors come back
            dashboard_address="127.0.0.1:8787" if self.options.dashboard else None,
            # the scheduler's HTTP routes (health, metrics) listen anyway: on a free port
            scheduler_kwargs=None if self.options.dashboard else {
                "dashboard_address": "127.0.0.1:0"})
        return Client(self._cluster, set_as_default=False)

    def _check_workers(self) -> int:
        """How many workers the scheduler has; bad input where none joined in time, where
        one cannot start the child processes the cases run in, or where the run has CUDA
        cases and no worker offers a GPU."""
        try:
            self._client.wait_for_workers(1, timeout=WORKERS_S)
        except (OSError, TimeoutError):
            raise UsageError(f"the Dask scheduler {self._client.scheduler.address} has no "
                             f"worker (waited {WORKERS_S:g} s)") from None
        facts = self._client.run(_worker_facts)
        if daemonic := [a for a, f in facts.items() if f["daemon"]]:
            raise UsageError(f"Dask worker {daemonic[0]} is a daemonic process: {DAEMON_FIX}")
        info = self._client.scheduler_info(n_workers=-1)["workers"]
        if any(device(d).kind == "cuda" for d in self.config.devices) and not any(
                w.get("resources", {}).get("GPU") for w in info.values()):
            raise UsageError("the run has CUDA cases but no Dask worker offers a GPU: start "
                             "each GPU's worker with --resources GPU=1")
        self._allowed_failures = self._client.run_on_scheduler(_allowed_failures)
        return len(facts)


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(dask_scheduler.allowed_failures)


def _worker_facts() -> dict[str, Any]:
    return {"daemon": bool(multiprocessing.current_process().daemon)}


def _local_gpus(config: BenchConfig) -> int:
    if not any(device(d).kind == "cuda" for d in config.devices):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# --- on the worker ---------------------------------------------------------------------------

_EXECUTORS: dict[tuple[BenchConfig, int], Isolated] = {}  # per config and worker thread
_RECORDS: dict[tuple[tuple[str, ...], int], dict[str, Any]] = {}  # per devices and threads


def run_unit(config: BenchConfig, target: Target, unit: list[list[Case]],
             sources: tuple[tuple[str, str], ...], profiled: bool, task: str) -> UnitDone:
    """A Dask task: run a size family's groups here, one after the other, and say where."""
    if multiprocessing.current_process().daemon:
        raise RuntimeError(f"this Dask worker is a daemonic process: {DAEMON_FIX}")
    config = _with_local_files(config, sources)
    name = unit[0][0].device
    lock = (Lock(f"layerbench-cpu-timing-{machine_key()}") if device(name).kind == "cpu"
            else contextlib.nullcontext())
    if config.threads:  # as the cases run: the ceilings are those of this thread count
        import torch

        torch.set_num_threads(config.threads)
    with lock:  # calibration, too, is timing: inside the lock
        record = _record(tuple(config.devices), config.threads, name)
        key = (config, threading.get_ident())
        if key not in _EXECUTORS:
            _EXECUTORS[key] = Isolated(config, target)
        execute = _EXECUTORS[key]
        worker, machine = get_worker(), record["key"]
        execute.on_case = lambda case: worker.log_event(PROGRESS, {
            "task": task, "case": list(case.key), "machine": machine, "worker": worker.address})
        with tempfile.TemporaryDirectory(prefix="layerbench-profile-") as tmp:
            root = Path(tmp)
            outcomes = [execute(group, root if profiled else None) for group in unit]
            files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                     if p.is_file()}
    return UnitDone(record["key"], record, outcomes, files)


def _record(devices: tuple[str, ...], threads: int, name: str) -> dict[str, Any]:
    """This machine's ``machines.json`` record, with the ceilings of ``name`` on ``threads``
    (measured once per machine and cached on its disk, as ``calibrate`` does)."""
    record = _RECORDS.setdefault((devices, threads), {**machine_info(list(devices)),
                                                      "calibration": {}})
    if name not in record["calibration"]:
        record["calibration"][name] = calibration.ceilings(name)
    return record


def _with_local_files(config: BenchConfig, sources: tuple[tuple[str, str], ...]) -> BenchConfig:
    """``config`` with its ``--impl-file``s written to this machine (the driver's paths need
    not exist here), in a directory named by their contents, so a rerun finds the same."""
    if not sources:
        return config
    import hashlib

    digest = hashlib.sha256(repr(sources).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"layerbench-impls-{digest}"
    paths = []
    for i, (original, text) in enumerate(sources):
        path = folder / str(i) / Path(original).name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    return replace(config, impl_files=tuple(paths))

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
from distributed import Client, KilledWorker, LocalCluster, Lock, as_completed

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

CONNECT_S = 10.0  # a scheduler that does not answer within this is bad input
WORKERS_S = 30.0  # ... and so is one that has no worker after this
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


class Dask:
    """Run size families as Dask tasks, on the scheduler at ``options.address`` or on a local
    cluster of ``options.workers`` worker processes bound to 127.0.0.1."""

    def __init__(self, config: BenchConfig, options: ExecutorOptions, target: Target) -> None:
        self.config, self.target, self.options = config, target, options
        self.machines: dict[str, dict[str, Any]] = {}
        self._cluster: LocalCluster | None = None
        self._futures: list[Any] = []
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
            f"; its scheduler runs a size family whose worker died again {retries} time(s) "
            "(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1 for once)")
        return {"name": "dask", "scheduler": self._client.scheduler.address,
                "workers": len(self._workers), "allowed_failures": retries,
                "text": f"Dask: {where}, {len(self._workers)} worker(s){note}"}

    def results(self, groups: list[list[Case]], profile_root: Path | None,
                started: Callable[[Case], None]) -> Iterator[Finished]:
        units: dict[tuple[str, ...], list[list[Case]]] = {}
        for group in groups:
            units.setdefault(family_key(group[0]), []).append(group)
        sources = tuple((str(p), Path(p).read_text(encoding="utf-8"))
                        for p in self.config.impl_files)
        pending = {}
        for unit in units.values():
            gpu = device(unit[0][0].device).kind != "cpu"
            future = self._client.submit(
                run_unit, self.config, self.target, unit, sources, profile_root is not None,
                pure=False, resources={"GPU": 1} if gpu else None,
                key=f"layerbench-{'-'.join(family_key(unit[0][0]))}-{id(unit)}")
            pending[future] = unit
        self._futures = list(pending)
        for future in as_completed(pending, loop=self._client.loop):
            unit = pending.pop(future)
            done = self._collect(future, unit)
            if profile_root is not None:
                for name, data in done.files.items():
                    path = profile_root / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
            for group, outcomes in zip(unit, done.outcomes, strict=True):
                started(group[0])
                yield Finished(group, outcomes, done.machine)

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

    def _collect(self, future: Any, unit: list[list[Case]]) -> UnitDone:
        """A finished task's outcomes; a task that failed (its workers died, or it raised)
        gives ``error`` outcomes naming where."""
        try:
            done: UnitDone = future.result()
        except KilledWorker as exc:
            address = getattr(exc.last_worker, "address", str(exc.last_worker))
            machine = self._workers.get(address) or getattr(exc.last_worker, "host", address)
            tries = exc.allowed_failures + 1
            reason = (f"lost: the Dask worker running its size family died {tries} "
                      f"time{'s' * (tries > 1)} (last {address} on machine {machine}); "
                      "nothing came back")
            return self._lost(unit, machine, reason)
        except Exception as exc:  # the task raised outside any case: nothing to keep
            return self._lost(unit, "", f"its Dask task failed: {describe(exc, NOTE_CHARS)}")
        known = self.machines.setdefault(done.machine, {})
        ceilings = {**known.get("calibration", {}), **done.record.get("calibration", {})}
        known.update({**done.record, "calibration": ceilings})
        return done

    def _lost(self, unit: list[list[Case]], machine: str, reason: str) -> UnitDone:
        self.machines.setdefault(machine, {"key": machine})
        return UnitDone(machine, {}, [[Lost("error", reason)] * len(g) for g in unit], {})

    def _connect(self) -> Client:
        address = self.options.address
        if address:
            try:
                return Client(address, timeout=CONNECT_S, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise UsageError(f"--scheduler {address}: no Dask scheduler answered within "
                                 f"{CONNECT_S:g} s ({type(exc).__name__})") from None
        gpus = _local_gpus(self.config)
        if gpus and self.options.workers > 1:
            raise UsageError(f"--workers {self.options.workers}: the local cluster's workers "
                             "would share this machine's GPU; use --workers 1, or a cluster "
                             "with one worker per GPU (docs/scale-out.md)")
        settings = {"distributed.worker.daemon": False,
                    "distributed.scheduler.allowed-failures": 1}
        with dask.config.set(settings):
            self._cluster = LocalCluster(
                n_workers=self.options.workers, threads_per_worker=1, processes=True,
                host="127.0.0.1", resources={"GPU": gpus} if gpus else None,
                silence_logs=logging.ERROR,
                dashboard_address="127.0.0.1:8787" if self.options.dashboard else None)
        return Client(self._cluster, set_as_default=False)

    def _check_workers(self) -> dict[str, str]:
        """Each worker's address -> machine key; bad input where none joined in time, where
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
        return {address: f["machine"] for address, f in facts.items()}


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(dask_scheduler.allowed_failures)


def _worker_facts() -> dict[str, Any]:
    return {"machine": machine_key(),
            "daemon": bool(multiprocessing.current_process().daemon)}


def _local_gpus(config: BenchConfig) -> int:
    if not any(device(d).kind == "cuda" for d in config.devices):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# --- on the worker ---------------------------------------------------------------------------

_EXECUTORS: dict[tuple[BenchConfig, int], Isolated] = {}  # per config and worker thread
_RECORDS: dict[tuple[str, ...], dict[str, Any]] = {}  # this machine's record, per devices


def run_unit(config: BenchConfig, target: Target, unit: list[list[Case]],
             sources: tuple[tuple[str, str], ...], profiled: bool) -> UnitDone:
    """A Dask task: run a size family's groups here, one after the other, and say where."""
    config = _with_local_files(config, sources)
    name = unit[0][0].device
    lock = (Lock(f"layerbench-cpu-timing-{machine_key()}") if device(name).kind == "cpu"
            else contextlib.nullcontext())
    with lock:  # calibration, too, is timing: inside the lock
        record = _record(tuple(config.devices), name)
        key = (config, threading.get_ident())
        if key not in _EXECUTORS:
            _EXECUTORS[key] = Isolated(config, target)
        execute = _EXECUTORS[key]
        with tempfile.TemporaryDirectory(prefix="layerbench-profile-") as tmp:
            root = Path(tmp)
            outcomes = [execute(group, root if profiled else None) for group in unit]
            files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                     if p.is_file()}
    return UnitDone(record["key"], record, outcomes, files)


def _record(devices: tuple[str, ...], name: str) -> dict[str, Any]:
    """This machine's ``machines.json`` record, with the ceilings of ``name`` (measured once
    per machine and cached on its disk, as ``calibrate`` does)."""
    record = _RECORDS.setdefault(devices, {**machine_info(list(devices)), "calibration": {}})
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

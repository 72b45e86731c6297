"""The seam between a run and where its size groups execute: this machine, or a Dask cluster.

The runner (``suites.runner.run``) hands an executor the run's size groups and gets each group's
outcomes back as it finishes, with the key of the machine it ran on; it judges and records them
the same way whichever executor ran them. ``Local`` runs the groups one after the other here (in
this process or a worker process, ``suites.isolation``); ``suites.dask_executor.Dask`` sends
them to a Dask cluster. Another engine (Ray, a plain SLURM executor) is one more module with a
class of the same four members (``machines``, ``results``, ``close``, ``describe``), its name in
``EXECUTORS`` and a line in ``suites.session.open_executor``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from reports.record import Case
from suites.config import BenchConfig
from suites.isolation import Target, executor

EXECUTORS = ("local", "dask")
#: ``pip install`` line of the engines that are an optional extra
INSTALL = {"dask": "pip install -e '.[cluster]' (or: pip install distributed)"}


@dataclass
class Finished:
    """A size group that ended: one outcome per case (a ``CaseResult`` or a
    ``suites.isolation.Lost``) and the key of the machine it ran on (``machines.json``)."""

    group: list[Case]
    outcomes: list[Any]
    machine: str


class Executor(Protocol):
    """Runs size groups and yields each as it finishes (in any order)."""

    #: every machine that ran (or will run) a group: key -> its ``machines.json`` record
    machines: dict[str, dict[str, Any]]

    def results(self, groups: list[list[Case]], profile_root: Path | None,
                started: Callable[[Case], None]) -> Iterator[Finished]: ...

    def close(self, kill: bool = False) -> None: ...

    def describe(self) -> dict[str, Any]:
        """For ``meta.json``: ``name`` and what else identifies where the run ran; ``text``,
        a phrase for the console ("" for nothing worth saying)."""
        ...


@dataclass
class Local:
    """Every group here, one after the other, on the machine ``machines`` holds (key ->
    record, one entry)."""

    config: BenchConfig
    target: Target
    machines: dict[str, dict[str, Any]]
    key: str = field(init=False)

    def __post_init__(self) -> None:
        (self.key,) = self.machines
        self._execute = executor(self.config, self.target)

    def results(self, groups: list[list[Case]], profile_root: Path | None,
                started: Callable[[Case], None]) -> Iterator[Finished]:
        for group in groups:
            started(group[0])
            yield Finished(group, self._execute(group, profile_root), self.key)

    def close(self, kill: bool = False) -> None:
        self._execute.close(kill=kill)

    def describe(self) -> dict[str, Any]:
        return {"name": "local", "text": ""}


"""Frozen configurations: what a user asked for (``*Options``, built once from the command
line) and the resolved plan of one benchmark run (``BenchConfig``, recorded in ``meta.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TimingConfig:
    """How long and how often to measure one case (``suites.rounds`` applies it).

    Each sample is a block of calls lasting about ``block_s`` (one call per sample for calls
    longer than that). A case takes at least ``min_samples`` samples (``slow_min_samples`` for
    calls over a second, e.g. naive loops) and ``min_time_s`` of them; then it stops once its
    median and its speed against the builtin are known to ``precision`` (the relative
    half-width of their 95% intervals), or after ``max_time_s`` of samples.
    """

    min_time_s: float = 0.25
    max_time_s: float = 1.0
    precision: float = 0.02
    warmup_s: float = 0.1
    block_s: float = 0.01
    min_samples: int = 7
    slow_min_samples: int = 3
    max_samples: int = 200
    flush_l2: bool = True  # CUDA: overwrite a buffer larger than L2 before every sample
    cuda_graph: bool = False  # CUDA: time replays of the call captured in a CUDA graph


@dataclass(frozen=True)
class BenchConfig:
    """What to run (layers x impls x compile x sizes x devices x dtypes x modes) and how."""

    layers: tuple[str, ...]
    impls: tuple[str, ...] = ()  # empty: every implementation of each layer
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("float32",)
    modes: tuple[str, ...] = ("fwd",)
    compile_modes: tuple[str, ...] = ("none",)
    preset: str = "default"
    size: tuple[tuple[str, int], ...] = ()  # one custom size instead of the preset
    budget_s: float = 10.0
    trials: int = 3
    seed: int = 0
    threads: int = 0  # 0: torch's default
    profile: bool = False
    isolate: bool = False  # each case in a worker process (hard time limit, survives crashes)
    timeout_s: float = 300.0  # per case, everything included; hard only when isolated
    timing: TimingConfig = field(default_factory=TimingConfig)
    out: Path = Path("results")
    impl_files: tuple[Path, ...] = ()
    shard: tuple[int, int] = (1, 1)  # (K, N): the K-th of N parts of the size families


@dataclass(frozen=True)
class RunOptions:
    """How a command that runs cases talks and where it writes."""

    out: Path = Path("results")
    impl_files: tuple[Path, ...] = ()
    quiet: bool = False  # no progress bar
    threads: int = 0  # 0: torch's default


@dataclass(frozen=True)
class ExecutorOptions:
    """Where a run's cases execute (``suites.executors``): ``name`` (local or dask); for Dask,
    the scheduler's ``address`` (None: a local cluster of one worker process on 127.0.0.1) and
    whether to serve its ``dashboard``."""

    name: str = "local"
    address: str | None = None
    dashboard: bool = False

    @property
    def here(self) -> bool:
        """Whether the cases run on this machine (its devices, its ceilings)."""
        return self.name == "local"


@dataclass(frozen=True)
class BenchOptions:
    """``bench`` as typed: names not yet checked, ``all`` not yet expanded (``suites.session``
    resolves them into a ``BenchConfig``)."""

    layer: str | None
    run: RunOptions = field(default_factory=RunOptions)
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("float32",)
    modes: tuple[str, ...] = ("fwd",)
    impls: tuple[str, ...] = ()
    compile_modes: tuple[str, ...] = ("none",)
    preset: str = "default"
    size: str | None = None  # k=v,... on top of the notes' size
    budget_s: float = 10.0
    min_time_s: float = 0.25
    max_time_s: float = 1.0
    precision: float = 0.02
    cuda_graph: bool = False
    trials: int = 3
    seed: int = 0
    profile: bool = False
    report: bool = True
    timeout_s: float = 300.0
    isolate: bool | None = None  # None: on with impl files or torch.compile
    resume: Path | None = None
    shard: str | None = None  # K/N
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)


@dataclass(frozen=True)
class CheckOptions:
    """``check`` as typed: compare the current code with a baseline, or record one."""

    baseline: Path
    run: RunOptions = field(default_factory=RunOptions)
    save_baseline: bool = False
    layers: tuple[str, ...] = ()
    preset: str = "quick"
    basis: str = "auto"
    threshold: float = 0.10
    alpha: float = 0.01
    repeats: int = 3
    remeasure: int = 2
    min_time_s: float = 0.25
    max_time_s: float = 1.0
    precision: float = 0.02
    budget_s: float = 2.0
    trials: int = 1


@dataclass(frozen=True)
class ProfileOptions:
    """``profile`` as typed: one case under the profiler."""

    layer: str
    impl: str
    run: RunOptions = field(default_factory=RunOptions)
    size: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    mode: str = "fwd"
    compile_mode: str = "none"
    wait: int | None = None  # None: 1, naive loops 0
    warmup: int = 1
    active: int | None = None  # None: 3, naive loops 1
    stacks: bool = False
    budget_s: float = 60.0
    seed: int = 0
    top: int = 15


def config_from_dict(data: dict[str, Any]) -> BenchConfig:
    """The ``BenchConfig`` recorded in a run's ``meta.json`` (``dataclasses.asdict`` of one).

    Raises ``ValueError`` on a field this version does not know or a value of the wrong kind.
    """
    known = {f.name for f in fields(BenchConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown configuration field(s) {', '.join(unknown)}")
    try:
        values: dict[str, Any] = dict(data)
        for name in ("layers", "impls", "devices", "dtypes", "modes", "compile_modes"):
            if name in values:
                values[name] = tuple(str(v) for v in values[name])
        if "size" in values:
            values["size"] = tuple((str(k), int(v)) for k, v in values["size"])
        if "impl_files" in values:
            values["impl_files"] = tuple(Path(p) for p in values["impl_files"])
        if "out" in values:
            values["out"] = Path(values["out"])
        if "shard" in values:
            values["shard"] = tuple(int(v) for v in values["shard"])
        if "timing" in values:
            values["timing"] = TimingConfig(**values["timing"])
        return BenchConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"unreadable configuration ({exc})") from None

"""The frozen configuration of one benchmark run, built once from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TimingConfig:
    """How long and how often to measure one case.

    ``min_time_s`` of samples are collected per case, each sample a block of calls lasting about
    ``block_s`` (one call per sample for calls longer than that), and never fewer than
    ``min_samples`` samples (``slow_min_samples`` for calls over a second, e.g. naive loops).
    """

    min_time_s: float = 0.5
    warmup_s: float = 0.1
    block_s: float = 0.01
    min_samples: int = 7
    slow_min_samples: int = 3
    max_samples: int = 200
    flush_l2: bool = True  # CUDA: overwrite a buffer larger than L2 before every sample


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
        if "timing" in values:
            values["timing"] = TimingConfig(**values["timing"])
        return BenchConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"unreadable configuration ({exc})") from None

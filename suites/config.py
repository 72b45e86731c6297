"""The frozen configuration of one benchmark run, built once from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
    timing: TimingConfig = field(default_factory=TimingConfig)
    out: Path = Path("results")
    impl_files: tuple[Path, ...] = ()

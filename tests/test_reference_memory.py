"""A float64 reference too large for the host's memory is an ``oom`` row, not a process the
kernel kills (a size that fills a GPU holds twice its bytes in float64 on the host)."""

from __future__ import annotations

import pytest
import torch

from impls import REGISTRY
from suites import correctness
from suites.cases import new_case
from suites.config import BenchConfig, TimingConfig
from suites.presets import notes_size
from suites.runner import run_case

CONV = REGISTRY.layer("conv")
SIZE = {**notes_size("conv"), "N": 2, "C_in": 1, "C_out": 2}
QUICK = BenchConfig(layers=("conv",), timing=TimingConfig(min_time_s=0.0, max_time_s=0.01))


def test_the_host_reports_its_available_memory() -> None:
    available = correctness.host_memory_available()
    assert available is None or available > 0


def test_a_reference_that_does_not_fit_is_an_oom_row(monkeypatch: pytest.MonkeyPatch) -> None:
    need = correctness.REFERENCE_FOOTPRINT * CONV.bytes_moved(SIZE, torch.float64, "fwd")
    monkeypatch.setattr(correctness, "host_memory_available", lambda: need - 1)
    monkeypatch.setattr(correctness, "_REFERENCES", type(correctness._REFERENCES)())
    case = new_case("conv", "im2col", "none", SIZE, "cpu", "float32", "fwd")
    result = run_case(case, QUICK)
    assert result.status == "oom"
    assert "float64 reference needs about" in result.reason and "GiB available" in result.reason
    monkeypatch.setattr(correctness, "host_memory_available", lambda: need)
    assert run_case(case, QUICK).status == "ok"

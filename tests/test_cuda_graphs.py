"""--compile reduce-overhead on a GPU: the call's tensors marked static (no copy into the graph's
pool per replay) and peak memory flagged rather than read as ~0; checked here without a GPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

from impls import REGISTRY
from reports.record import CaseResult
from suites import runner
from suites.cases import new_case
from suites.compilation import graphed_on
from suites.config import TimingConfig
from suites.correctness import bind, make_trial
from suites.presets import notes_size
from suites.rounds import Contestant

CONV = REGISTRY.layer("conv")
SMALL = {**notes_size("conv"), "N": 1, "C_in": 1, "C_out": 2}


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_static_inputs_mark_every_tensor_the_call_takes(mode: str) -> None:
    seen: dict[str, torch.Tensor] = {}

    def spy(**kwargs: object) -> torch.Tensor:
        seen.update({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        return torch.nn.functional.conv2d(**kwargs)  # type: ignore[arg-type]

    trial = make_trial(CONV, SMALL, 0, torch.float32, "cpu", mode)
    with torch.set_grad_enabled(mode != "fwd"):
        bind(spy, trial)()
        assert not any(hasattr(t, "_dynamo_static_input_type") for t in seen.values())
        bind(spy, trial, static_inputs=True)()
    assert set(seen) == {"x", "weight", "bias"}
    assert all(getattr(t, "_dynamo_static_input_type", None) for t in seen.values())


def test_only_graph_modes_on_cuda_are_graphed() -> None:
    assert graphed_on("reduce-overhead", "cuda") and graphed_on("max-autotune", "cuda")
    assert not graphed_on("reduce-overhead", "cpu")
    assert not graphed_on("default", "cuda") and not graphed_on("none", "cuda")
    assert not graphed_on("max-autotune-no-cudagraphs", "cuda")


class _FakeCuda:
    kind, event_timing = "cuda", False

    def __init__(self) -> None:
        self.asked = 0

    def peak_memory_bytes(self, step: object) -> int:
        self.asked += 1
        return 123


@pytest.mark.parametrize(("compile_mode", "measured"), [("reduce-overhead", False),
                                                         ("default", True)])
def test_graph_pool_memory_is_flagged_not_read(compile_mode: str, measured: bool) -> None:
    case = new_case("conv", "im2col", compile_mode, SMALL, "cpu", "float32", "fwd")
    result = CaseResult(case)
    contestant = Contestant(lambda: 1e-3, 1e-3, seconds=[1e-3] * 7, rounds=list(range(7)))
    prepared = runner._Prepared(contestant, lambda: None, float("nan"))
    where = _FakeCuda()
    runner._finish(result, prepared, 1, contextlib.nullcontext(), where,  # type: ignore[arg-type]
                   TimingConfig())
    assert (where.asked == 1) == measured
    assert (result.peak_mem_bytes == 123) == measured
    flagged = [f for f in result.flags if f.startswith(runner.GRAPH_POOL_TAG)]
    assert bool(flagged) != measured

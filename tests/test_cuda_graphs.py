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
from suites.config import BenchConfig, TimingConfig
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


def test_the_compiler_is_warmed_up_on_the_cases_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from suites import compilation

    warmed: list[str] = []
    monkeypatch.setattr(compilation, "_warm_compiler", warmed.append)
    compilation.reset_compiler("cuda:1")
    compilation.compiled(lambda t: t, "default", reset=False, device="cuda")
    compilation.compiled(lambda t: t, "default", reset=False)
    assert warmed == ["cuda", "cuda", "cpu"]


def test_the_profile_pass_reuses_the_timed_call(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: object) -> None:
    """bench --profile profiles the step it timed: nothing is compiled (or set up) again
    inside the case's --timeout."""
    made: list[str] = []
    real = runner.compiled

    def counting(fn: object, mode: str, **kwargs: object) -> object:
        made.append(mode)
        return real(fn, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "compiled", counting)
    group = [new_case("conv", impl, "none", SMALL, "cpu", "float32", "fwd")
             for impl in ("builtin", "im2col")]
    config = BenchConfig(layers=("conv",), profile=True,
                         timing=TimingConfig(min_time_s=0.0, max_time_s=0.01))
    results = runner.execute_group(group, config, tmp_path,  # type: ignore[arg-type]
                                   lambda i: contextlib.nullcontext())
    assert [r.status for r in results] == ["ok", "ok"]
    assert all(r.op_calls > 0 for r in results)  # profiled
    assert made == ["none", "none"]  # once per case: the timing's

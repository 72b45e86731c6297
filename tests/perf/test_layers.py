"""Every implementation of every layer at its quick sizes, under pytest-benchmark.

Not part of the default ``pytest`` run (``tests/conftest.py`` leaves this folder out unless it is
named). Use it as pytest-benchmark users do::

    pytest tests/perf --benchmark-autosave                 # store a baseline in .benchmarks/
    pytest tests/perf --benchmark-compare --benchmark-compare-fail=median:15%

Each test first checks the implementation against the float64 reference (a wrong result fails
the test before anything is timed), then times one call, device synchronised, with the
``benchmark`` fixture. Naive loops are skipped at sizes where one call would exceed
``NAIVE_CALL_LIMIT_S``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from impls import DTYPE_NAMES, REGISTRY
from suites.budget import predict
from suites.config import BenchConfig
from suites.correctness import bind, check
from suites.devices import available, device
from suites.presets import preset_sizes

NAIVE_CALL_LIMIT_S = 0.5
DTYPE, MODE, SEED = "float32", "fwd", 0
DEVICES = [d for d in ("cpu", "cuda") if d in available()]


def _cases() -> list[Any]:
    cases = []
    for layer in REGISTRY.layers():
        for impl in REGISTRY.impls(layer.name):
            for name in DEVICES:
                if device(name).kind not in impl.devices:
                    continue
                for size in preset_sizes(layer.name, "quick"):
                    label = layer.label(size)
                    cases.append(pytest.param(layer.name, impl.name, size, name,
                                              id=f"{layer.name}-{impl.name}-{label}-{name}"))
    return cases


@pytest.mark.parametrize(("layer_name", "impl_name", "size", "device_name"), _cases())
def test_layer(benchmark: Any, layer_name: str, impl_name: str, size: dict[str, int],
               device_name: str) -> None:
    layer, impl = REGISTRY.layer(layer_name), REGISTRY.impl(layer_name, impl_name)
    dtype = DTYPE_NAMES[DTYPE]
    if reason := impl.unsupported(device_name, dtype, MODE, "none"):
        pytest.skip(reason)
    with torch.no_grad():
        if impl.naive:
            config = BenchConfig(layers=(layer_name,))
            per_call_s = predict(impl, layer, size, dtype, device_name, MODE, config).per_call_s
            if per_call_s > NAIVE_CALL_LIMIT_S:
                pytest.skip(f"naive loop: ~{per_call_s:.3g} s per call")
        verdict, trial = check(impl.fn, layer, size, [SEED], dtype, device_name, MODE)
        assert verdict.ok, "; ".join(verdict.problems)
        step, where = bind(impl.fn, trial), device(device_name)

        def call() -> None:
            step()
            where.synchronize()  # the work, not its launch

        benchmark.group = f"{layer_name} {layer.label(size)} {device_name}"
        benchmark.extra_info.update(layer=layer_name, impl=impl_name, device=device_name,
                                    dtype=DTYPE, mode=MODE, case=layer.label(size),
                                    flops=layer.flops(size, MODE),
                                    threads=torch.get_num_threads())
        benchmark(call)

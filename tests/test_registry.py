"""The registry (order, derived implementations, scoped registration) and the devices."""

from __future__ import annotations

import pytest
import torch

from impls import REGISTRY, RegistryError, register_impl
from suites.devices import available, device

NOTES_ORDER = ["conv", "bn", "pool", "linear", "cnn", "rnn", "attention", "mha", "layernorm",
               "ffn", "encoder", "decoder", "transformer"]


def _attention(q, k, v, mask, temperature):  # type: ignore[no-untyped-def]
    return REGISTRY.impl("attention", "matmul").fn(q, k, v, mask, temperature)


def test_layers_come_in_the_notes_order() -> None:
    assert [layer.name for layer in REGISTRY.layers()] == NOTES_ORDER


def test_an_attention_registered_later_reaches_the_stacks_and_leaves_with_its_scope() -> None:
    with REGISTRY.scoped():
        register_impl("attention", "later", devices=("cpu",), dtypes=(torch.float64,))(
            _attention)
        for layer in ("encoder", "decoder", "transformer"):
            derived = REGISTRY.impl(layer, "later")
            assert derived.parts == (("attention", "later"),)
            assert (derived.devices, derived.dtypes) == ({"cpu"}, {torch.float64})
        assert "later" in REGISTRY.impl_order()
    for layer in ("attention", "encoder"):
        with pytest.raises(KeyError, match="later"):
            REGISTRY.impl(layer, "later")


def test_a_name_is_taken_unless_replaced() -> None:
    with REGISTRY.scoped():
        with pytest.raises(RegistryError, match="already registered"):
            register_impl("conv", "builtin")(lambda x, weight, bias, stride, padding: x)
        register_impl("attention", "matmul", replace=True)(_attention)
        assert REGISTRY.impl("attention", "matmul").fn is _attention
        assert REGISTRY.impl("encoder", "matmul").parts == (("attention", "matmul"),)
    assert REGISTRY.impl("attention", "matmul").fn is not _attention
    with pytest.raises(RegistryError, match="unknown layer"):
        register_impl("nolayer", "x")(_attention)


def test_device_names_and_kinds() -> None:
    assert device("cpu").kind == "cpu" and device("cuda:1").kind == "cuda"
    assert device("cpu").problem() == "" and "cpu" in available()
    for bad in ("tpu", "mps:0", "cpu:1", "cudax"):
        with pytest.raises(ValueError, match="unknown device"):
            device(bad)
    assert "float64" in device("mps").dtype_problem(torch.float64)
    assert device("mps").dtype_problem(torch.float32) == ""
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in device("cuda").problem()
    cpu = device("cpu")
    assert cpu.peak_memory_bytes(lambda: None) is None  # only the profiler sees CPU memory
    assert cpu.flush_buffer() is None and not cpu.event_timing

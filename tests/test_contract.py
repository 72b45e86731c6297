"""What every registered layer and implementation must satisfy, tested once for all of them.

A new layer gets these tests by registering itself (one impls module and one preset); its own
test file only tests what is special about it (planted bugs, its FLOP estimate, its modules).
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from impls import MODES, REGISTRY, CaseInputs, Impl, Layer
from impls.registry import dtype_name
from suites.correctness import TOLERANCES, check
from suites.presets import PRESET_NAMES, notes_size, preset_table

LAYERS = [layer.name for layer in REGISTRY.layers()]
#: FlopCounterMode counts GEMMs and convolutions only: these layers' flops() are documented
#: estimates of elementwise work, each checked against a count of operations in its own tests
ESTIMATED_FLOPS = {"bn", "pool", "layernorm"}
#: bytes_moved() reads only part of a tensor: the embedding rows a batch can touch
#: (tests/test_rnn.py checks it)
PARTIAL_READS = {"rnn"}
#: the largest size (forward FLOPs) every implementation is checked at; naive loops run at the
#: smallest quick size only
SMALL_FLOPS = 1e7


def _small(layer: Layer) -> list[dict[str, int]]:
    sizes = sorted(preset_table(layer.name)["quick"], key=lambda p: layer.flops(p, "fwd"))
    return [p for p in sizes if layer.flops(p, "fwd") <= SMALL_FLOPS] or sizes[:1]


def _checks() -> list[pytest.param]:
    """(layer, impl, size, mode) for every CPU implementation at its small sizes."""
    cases = []
    for layer in REGISTRY.layers():
        sizes = _small(layer)
        for impl in REGISTRY.impls(layer.name):
            if "cpu" not in impl.devices:
                continue
            for mode in (m for m in layer.modes if m in impl.modes):
                for size in sizes[:1] if impl.naive else sizes:
                    cases.append(pytest.param(layer, impl, size, mode,
                                              id=f"{layer.name}-{impl.name}-{mode}-"
                                                 f"{layer.label(size)}"))
    return cases


def _inputs(layer: Layer, size: dict[str, int], seed: int = 0) -> CaseInputs:
    return layer.make_inputs(size, torch.Generator().manual_seed(seed))


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize(("layer", "impl", "size", "mode"), _checks())
def test_every_implementation_matches_the_reference(layer: Layer, impl: Impl,
                                                    size: dict[str, int], mode: str) -> None:
    """float32 output, every gradient (fwdbwd) and the weights after one step (train), over
    two seeds, within the float32 tolerance of the float64 reference."""
    verdict, trial = check(impl.fn, layer, size, [0, 1], torch.float32, "cpu", mode)
    assert verdict.ok, verdict.problems
    assert verdict.rel_err < TOLERANCES["float32"][0]
    if mode == "fwdbwd":
        assert set(trial.ref_grads) == set(trial.inputs.grad) != set()


@pytest.mark.parametrize(("layer", "impl", "dtype"), [
    pytest.param(layer, impl, dtype, id=f"{layer.name}-{impl.name}-{dtype_name(dtype)}")
    for layer in REGISTRY.layers() for impl in REGISTRY.impls(layer.name)
    for dtype in (torch.float64, torch.bfloat16)
    if "cpu" in impl.devices and dtype in impl.dtypes])
def test_every_implementation_passes_in_float64_and_bfloat16(layer: Layer, impl: Impl,
                                                            dtype: torch.dtype) -> None:
    verdict, _ = check(impl.fn, layer, _small(layer)[0], [0], dtype, "cpu", "fwd")
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize(("layer", "impl"), [
    pytest.param(layer, impl, id=f"{layer.name}-{impl.name}")
    for layer in REGISTRY.layers() for impl in REGISTRY.impls(layer.name)])
def test_implementations_take_exactly_the_inputs_they_compute_with(layer: Layer,
                                                                   impl: Impl) -> None:
    args = set(_inputs(layer, _small(layer)[0]).args)
    parameters = inspect.signature(impl.fn).parameters.values()
    named = {p.name for p in parameters if p.kind != p.VAR_KEYWORD}
    required = {p.name for p in parameters if p.default is p.empty
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    assert required <= args, f"{impl.name} needs {required - args}, which no case gives"
    takes_rest = any(p.kind == p.VAR_KEYWORD for p in parameters)
    assert takes_rest or args <= named, f"{impl.name} does not take {args - named}"
    assert impl.modes <= set(MODES) and impl.devices and impl.dtypes
    for part_layer, part in impl.parts:
        REGISTRY.impl(part_layer, part)  # what it is made of is registered


@pytest.mark.parametrize("layer", LAYERS)
def test_inputs_are_seeded_random_float64(layer: str) -> None:
    spec = REGISTRY.layer(layer)
    size = _small(spec)[0]
    a, b, other = _inputs(spec, size), _inputs(spec, size), _inputs(spec, size, seed=1)
    assert set(a.grad) | set(a.state) | set(a.loss_only) <= set(a.tensors)
    assert not set(a.loss_only) & set(a.grad)
    for name, t in a.tensors.items():
        torch.testing.assert_close(t, b.tensors[name], rtol=0, atol=0)
        if t.is_floating_point():
            assert t.dtype == torch.float64, name
            assert t.numel() < 2 or float(t.std()) > 0, f"{name} is constant"
            if name in a.grad and t.numel() > 4:  # (a fixed table such as pos_table is not)
                assert not torch.equal(t, other.tensors[name]), f"{name} ignores the seed"
        else:
            assert name not in a.grad, f"{name} is not floating but receives a gradient"


@pytest.mark.parametrize("layer", LAYERS)
def test_presets_are_valid_and_include_the_notes_size(layer: str) -> None:
    spec = REGISTRY.layer(layer)
    table, notes = preset_table(layer), notes_size(layer)
    assert set(table) == set(PRESET_NAMES)
    spec.check(notes)
    for name, sizes in table.items():
        assert notes in sizes, f"{name} lacks the notes' size"
        labels = [spec.label(p) for p in sizes]
        assert len(set(labels)) == len(labels), f"{name} has a size twice"
        for params, label in zip(sizes, labels, strict=True):
            spec.check(params)
            assert set(params) == set(spec.params)
            assert spec.flops(params, "fwd") > 0
            assert re.fullmatch(r"[A-Za-z0-9_]+", label) and len(label) <= 80, label
            small = spec.calibration_params(params)
            spec.check(small)
            assert 0 < spec.flops(small, "fwd") <= spec.flops(params, "fwd")


@pytest.mark.parametrize("layer", LAYERS)
def test_check_rejects_missing_and_unknown_parameters(layer: str) -> None:
    spec = REGISTRY.layer(layer)
    notes = notes_size(layer)
    first = spec.params[0]
    with pytest.raises(ValueError, match=first):
        spec.check({k: v for k, v in notes.items() if k != first})
    with pytest.raises(ValueError, match="bogus"):
        spec.check({**notes, "bogus": 1})


#: dimensions the presets keep equal that a FLOP formula must still tell apart (d_k and d_v)
UNEQUAL = {name: {"d_v": 4} for name in ("attention", "mha", "encoder", "decoder",
                                         "transformer")}


def _flop_cases() -> list[pytest.param]:
    cases = []
    for layer in REGISTRY.layers():
        if layer.name in ESTIMATED_FLOPS:
            continue
        sizes = _small(layer)
        if layer.name in UNEQUAL:
            sizes = [*sizes, {**sizes[0], **UNEQUAL[layer.name]}]
        cases += [pytest.param(layer, size, mode, id=f"{layer.name}-{mode}-{layer.label(size)}")
                  for size in sizes for mode in layer.modes]
    return cases


@pytest.mark.parametrize(("layer", "size", "mode"), _flop_cases())
def test_flops_match_flop_counter_on_the_reference(layer: Layer, size: dict[str, int],
                                                   mode: str) -> None:
    inputs = _inputs(layer, size)
    leaves = {n: t.requires_grad_(mode != "fwd" and n in inputs.grad)
              for n, t in inputs.tensors.items()}
    args = {**{n: t for n, t in leaves.items() if n not in inputs.loss_only}, **inputs.static}
    with FlopCounterMode(display=False) as counter:
        out = _first(layer.reference(**args))
        if mode == "fwdbwd":
            out.backward(torch.randn_like(out))
        elif mode == "train":
            layer.loss(out, leaves).backward()
    assert layer.flops(size, mode) == counter.get_total_flops()


def _bytes(t: torch.Tensor, dtype: torch.dtype) -> int:
    return t.numel() * (torch.empty((), dtype=dtype).element_size() if t.is_floating_point()
                        else t.element_size())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layer", [n for n in LAYERS if n not in PARTIAL_READS])
def test_bytes_count_every_input_the_output_and_written_state_once(layer: str,
                                                                   dtype: torch.dtype) -> None:
    spec = REGISTRY.layer(layer)
    for size in _small(spec):
        inputs = _inputs(spec, size)
        before = inputs.clone()
        with torch.no_grad():
            out = _first(spec.reference(**inputs.args))
        written = [n for n in inputs.state if not torch.equal(inputs.tensors[n],
                                                              before.tensors[n])]
        args = [t for n, t in inputs.tensors.items() if n not in inputs.loss_only]
        fwd = (sum(_bytes(t, dtype) for t in args) + _bytes(out, dtype)
               + sum(_bytes(inputs.tensors[n], dtype) for n in written))
        assert spec.bytes_moved(size, dtype, "fwd") == fwd, spec.label(size)
        if "fwdbwd" in spec.modes:
            grads = sum(_bytes(inputs.tensors[n], dtype) for n in inputs.grad)
            assert spec.bytes_moved(size, dtype, "fwdbwd") >= fwd + _bytes(out, dtype) + grads

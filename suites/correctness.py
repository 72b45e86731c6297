"""Correctness: every implementation against the layer's float64 reference on the CPU.

A trial builds fresh seeded inputs, rounds them to the case's dtype, runs the implementation on
the case's device and the reference in float64 on the CPU *from the same rounded values*, and
compares the output and, in ``fwdbwd``, the gradient of every input and parameter, plus any state
the layer updates. Several trials with different seeds make a lucky pass unlikely.

The implementations of one size share their seeds, so the float64 side of a trial (inputs and
reference answers) is computed once and kept for the next cases (``REFERENCE_CACHE_BYTES``);
each trial still gets inputs of its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from impls.registry import LIBRARIES, CaseInputs, Layer, Params, dtype_name
from reports.schema import precision
from suites import devices

#: dtype -> (rtol, atol). An element passes iff ``|out - ref| <= atol * rms(ref) + rtol * |ref|``.
#: ``atol`` is relative to the reference's RMS so one table fits outputs and gradients of any
#: magnitude (a weight gradient sums over the batch and grows with it).
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-7),
    "float32": (1e-4, 1e-4),
    "tf32": (2e-3, 2e-3),  # float32 on CUDA through a library allowed TF32 (10-bit mantissa)
    "float16": (1e-2, 1e-2),
    "bfloat16": (2e-2, 2e-2),
}


def tolerance_key(dtype: torch.dtype, device: str,
                  libraries: Collection[str] | None = None) -> str:
    """The TOLERANCES row for an implementation whose float32 math goes through ``libraries``
    (``Impl.libraries``): ``tf32`` for float32 on CUDA where one of them may use TF32 now.
    None: not known, so any library's TF32 counts (the looser row; what ``check`` did before
    implementations declared their libraries)."""
    tf32 = devices.device(device).uses_tf32(dtype, LIBRARIES if libraries is None else libraries)
    return precision(dtype_name(dtype), device, tf32)


@dataclass(frozen=True)
class Comparison:
    """One tensor (output, a gradient, a state) against its reference."""

    what: str
    max_abs_err: float
    rel_err: float
    problem: str = ""  # empty when within tolerance


@dataclass
class Verdict:
    """The worst figures over all trials, and the first problem found."""

    problems: list[str] = field(default_factory=list)
    max_abs_err: float = 0.0
    rel_err: float = 0.0
    grad_max_abs_err: float = float("nan")
    grad_rel_err: float = float("nan")

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, comparison: Comparison) -> None:
        if comparison.what == "output":
            self.max_abs_err = _worst(self.max_abs_err, comparison.max_abs_err)
            self.rel_err = _worst(self.rel_err, comparison.rel_err)
        elif comparison.what.startswith("grad"):
            self.grad_max_abs_err = _worst(self.grad_max_abs_err, comparison.max_abs_err)
            self.grad_rel_err = _worst(self.grad_rel_err, comparison.rel_err)
        if comparison.problem:
            self.problems.append(comparison.problem)


def _worst(a: float, b: float) -> float:
    if a != a:  # nan: no figure yet
        return b
    return b if b != b or b > a else a


def compare(what: str, out: Any, ref: Tensor, device: str, dtype: torch.dtype,
            rtol: float, atol: float) -> Comparison:
    """Elementwise check of ``out`` against ``ref`` (float64), with the error figures."""
    if not isinstance(out, Tensor):
        return Comparison(what, float("nan"), float("nan"),
                          f"{what}: expected a Tensor, got {type(out).__name__}")
    if out.shape != ref.shape:
        return Comparison(what, float("nan"), float("nan"),
                          f"{what}: shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    if out.dtype != dtype:
        return Comparison(what, float("nan"), float("nan"),
                          f"{what}: dtype {out.dtype}, expected {dtype}")
    if out.device.type != devices.device(device).kind:
        return Comparison(what, float("nan"), float("nan"),
                          f"{what}: on {out.device}, expected {device}")
    got = out.detach().to("cpu", torch.float64)
    err = (got - ref).abs()
    finite_ref = torch.isfinite(ref)
    max_abs = float(err[finite_ref].max()) if finite_ref.any() else 0.0
    ref_norm = float(ref[finite_ref].norm())
    rel = float((got - ref)[finite_ref].norm()) / ref_norm if ref_norm > 0 else max_abs
    if not torch.isfinite(got[finite_ref]).all():
        n_bad = int((~torch.isfinite(got) & finite_ref).sum())
        return Comparison(what, float("nan"), float("nan"),
                          f"{what}: {n_bad} NaN/Inf element(s) where the reference is finite")
    rms = float(ref[finite_ref].pow(2).mean().sqrt()) if finite_ref.any() else 0.0
    bad = err > atol * rms + rtol * ref.abs()
    problem = ""
    if bad.any():
        n_bad = int(bad.sum())
        index = tuple(int(i) for i in torch.nonzero(bad)[0])
        problem = (f"{what}: {n_bad} of {ref.numel()} element(s) outside tolerance "
                   f"(first at {index}: {float(got[index]):.6g} vs {float(ref[index]):.6g}; "
                   f"max abs err {max_abs:.3g}, rel err {rel:.3g})")
    return Comparison(what, max_abs, rel, problem)


@dataclass(frozen=True)
class Trial:
    """One seeded set of inputs on the case's device and dtype, with the reference's answers.

    The reference runs in float64 on the CPU from the *rounded* inputs, so only the
    implementation's own arithmetic is judged, not the rounding of its inputs.
    """

    layer: Layer
    mode: str
    inputs: CaseInputs
    grad_out: Tensor | None  # upstream gradient (fwdbwd only), on the device
    ref_outs: tuple[Tensor, ...]  # the reference's outputs; the first is the primary one
    ref_grads: dict[str, Tensor]  # fwdbwd: gradient of every input in ``inputs.grad``
    ref_state: dict[str, Tensor]  # tensors updated in place: layer state; in train the weights

    @property
    def ref_out(self) -> Tensor:
        return self.ref_outs[0]


def make_trial(layer: Layer, params: Params, seed: int, dtype: torch.dtype, device: str,
               mode: str) -> Trial:
    """Inputs from ``seed`` (a fresh copy on ``device``) and the reference's outputs,
    gradients and updated state."""
    ref = _reference(layer, params, seed, dtype, mode)
    grad_out = (None if ref.grad_out is None
                else ref.grad_out.to(device=device, dtype=dtype, copy=True))
    return Trial(layer, mode, ref.inputs.to(dtype, device, copy=True), grad_out, ref.outs,
                 dict(ref.grads), dict(ref.state))


@dataclass(frozen=True)
class _Reference:
    """The device-independent side of a trial, all float64 on the CPU (never modified)."""

    layer: Layer  # kept alive: the cache key holds its id
    inputs: CaseInputs  # the inputs rounded to the case's dtype, exactly
    grad_out: Tensor | None  # fwdbwd: the upstream gradient, rounded likewise
    outs: tuple[Tensor, ...]
    grads: dict[str, Tensor]
    state: dict[str, Tensor]

    @property
    def nbytes(self) -> int:
        tensors = [*self.inputs.tensors.values(), *self.outs, *self.grads.values(),
                   *self.state.values(), *([self.grad_out] if self.grad_out is not None else [])]
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


def _cache_bytes() -> int:
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        memory = 8 << 30
    return min(4 << 30, memory // 8)


#: Bytes of float64 references kept between cases: the trials of a size, for the size's next
#: implementations (the notes' transformer takes ~0.4 GB and ~0.7 s of ``torch.randn`` per
#: trial, and its 3 trials must fit, or each evicts the next). Oldest dropped first; a larger
#: single reference is not kept. The smaller of 4 GiB and an eighth of the memory.
REFERENCE_CACHE_BYTES = _cache_bytes()
_REFERENCES: OrderedDict[tuple[Any, ...], _Reference] = OrderedDict()


def _reference(layer: Layer, params: Params, seed: int, dtype: torch.dtype,
               mode: str) -> _Reference:
    key = (id(layer), tuple(sorted(params.items())), seed, dtype, mode)
    if (found := _REFERENCES.get(key)) is not None:
        _REFERENCES.move_to_end(key)
        return found
    found = _new_reference(layer, params, seed, dtype, mode)
    size = found.nbytes
    if size <= REFERENCE_CACHE_BYTES:
        _REFERENCES[key] = found
        while sum(r.nbytes for r in _REFERENCES.values()) > REFERENCE_CACHE_BYTES:
            _REFERENCES.popitem(last=False)
    return found


#: what a float64 reference may hold at once, in multiples of its minimum traffic (inputs,
#: weights, outputs and gradients once): the clean copy of the inputs, autograd's saved
#: intermediates (attention's scores), the outputs
REFERENCE_FOOTPRINT = 4


def host_memory_available() -> int | None:
    """Bytes the kernel says a new allocation can take without swapping (``MemAvailable``);
    None where it does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reference_fits(layer: Layer, params: Params, mode: str) -> None:
    """Raise ``MemoryError`` (the case becomes ``oom``) when the float64 reference, computed on
    the host whatever the case's device, would not fit the host's available memory: a size
    that fills a GPU would otherwise get the whole process killed by the kernel's OOM killer
    before the GPU says anything."""
    available = host_memory_available()
    need = REFERENCE_FOOTPRINT * layer.bytes_moved(params, torch.float64, mode)
    if available is not None and need > available:
        raise MemoryError(f"the float64 reference needs about {need / 2**30:.3g} GiB of host "
                          f"memory, {available / 2**30:.3g} GiB available")


def _new_reference(layer: Layer, params: Params, seed: int, dtype: torch.dtype,
                   mode: str) -> _Reference:
    reference_fits(layer, params, mode)
    generator = torch.Generator().manual_seed(seed)
    # rounded to dtype and back: float64 holds every value of the lower precisions exactly
    ref = layer.make_inputs(params, generator).to(dtype, "cpu").to(torch.float64, "cpu",
                                                                   copy=True)
    inputs = ref.clone()  # kept pristine: the reference below updates its state in place
    if mode == "fwd":
        with torch.no_grad():
            outs = _as_tuple(layer.reference(**ref.args))
        return _Reference(layer, inputs, None, outs, {}, _state(ref))
    leaves = {n: t.detach().requires_grad_(n in ref.grad) for n, t in ref.tensors.items()}
    outs = _as_tuple(layer.reference(**_with(ref, leaves).args))
    wanted = [leaves[n] for n in ref.grad]
    detached = tuple(o.detach() for o in outs)
    if mode == "train":  # one SGD step: the weights after it are compared like state
        grads = torch.autograd.grad(layer.loss(outs[0], leaves), wanted)
        with torch.no_grad():
            updated = {n: leaves[n] - layer.lr * g for n, g in zip(ref.grad, grads, strict=True)}
        return _Reference(layer, inputs, None, detached, {}, {**_state(ref), **updated})
    grad_out = torch.randn(outs[0].shape, generator=generator, dtype=torch.float64)
    grad_out = grad_out.to(dtype).double()  # what the implementation will receive
    grads = torch.autograd.grad(outs[0], wanted, grad_out)
    return _Reference(layer, inputs, grad_out, detached,
                      dict(zip(ref.grad, (g.detach() for g in grads), strict=True)),
                      _state(ref))


def _mark_static(args: dict[str, Any]) -> None:
    for value in args.values():
        if isinstance(value, Tensor):
            torch._dynamo.mark_static_address(value)


def _as_tuple(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def _with(inputs: CaseInputs, tensors: dict[str, Tensor]) -> CaseInputs:
    return dataclasses.replace(inputs, tensors=tensors)


def _state(inputs: CaseInputs) -> dict[str, Tensor]:
    return {n: inputs.tensors[n].detach() for n in inputs.state}


Call = Callable[[], tuple[Any, dict[str, Tensor | None]]]


def bind(fn: Callable[..., Any], trial: Trial, static_inputs: bool = False) -> Call:
    """A zero-argument callable running ``fn`` on the trial's inputs, all setup done up front.

    It returns ``(output, gradients)``. In fwdbwd the gradients come from
    ``torch.autograd.grad`` with the trial's fixed upstream gradient: nothing accumulates into
    ``.grad``, so nothing needs zeroing between calls. In train it is one SGD step: forward, the
    layer's loss, gradients, and the weights updated in place. Call it under ``torch.no_grad()``
    in fwd.

    ``static_inputs``: mark every tensor the call takes as living at a fixed address
    (``torch._dynamo.mark_static_address``), as a module's parameters are. A CUDA graph
    (``--compile reduce-overhead``) then reads them in place instead of copying each into its
    pool on every replay, which no network pays for its weights. The benchmark passes the same
    tensors every call, so this holds; the copy of a network's input activations per replay is
    then not timed either.
    """
    inputs = trial.inputs
    if trial.mode == "fwd":
        args = inputs.args
        if static_inputs:
            _mark_static(args)
        return lambda: (fn(**args), {})
    leaves = {n: t.detach().requires_grad_(n in inputs.grad) for n, t in inputs.tensors.items()}
    args = _with(inputs, leaves).args
    if static_inputs:
        _mark_static(args)
    wanted = [leaves[n] for n in inputs.grad]
    layer, grad_out = trial.layer, trial.grad_out

    def forward_backward() -> tuple[Any, dict[str, Tensor | None]]:
        out = fn(**args)
        grads = torch.autograd.grad(_as_tuple(out)[0], wanted, grad_out, allow_unused=True)
        return out, dict(zip(inputs.grad, grads, strict=True))

    def train_step() -> tuple[Any, dict[str, Tensor | None]]:
        out = fn(**args)
        grads = torch.autograd.grad(layer.loss(_as_tuple(out)[0], leaves), wanted)
        with torch.no_grad():
            torch._foreach_add_(wanted, list(grads), alpha=-layer.lr)
        return out, {}

    return train_step if trial.mode == "train" else forward_backward


def check_trial(fn: Callable[..., Any], trial: Trial, device: str, dtype: torch.dtype,
                libraries: Collection[str] | None = None) -> list[Comparison]:
    """Everything one call of ``fn`` produces, compared with the trial's reference, within the
    tolerance of its precision (``tolerance_key``)."""
    rtol, atol = TOLERANCES[tolerance_key(dtype, device, libraries)]
    before = trial.inputs.clone()
    devices.device(device).poison_allocator(trial.ref_out.numel(), dtype)
    out, grads = bind(fn, trial)()
    # An implementation may return fewer outputs than the reference (e.g. no attention weights,
    # which the registry notes say); every output it does return is checked.
    names = ("output", *trial.layer.output_names[1:])
    pairs = zip(_as_tuple(out), trial.ref_outs, strict=False)
    found = [compare(names[i] if i < len(names) else f"output {i}", got, ref, device, dtype,
                     rtol, atol) for i, (got, ref) in enumerate(pairs)]
    for name, ref_grad in trial.ref_grads.items():
        grad = grads[name]
        if grad is None:
            found.append(Comparison(f"grad {name}", float("nan"), float("nan"),
                                    f"grad {name}: None (the output does not depend on it)"))
        else:
            found.append(compare(f"grad {name}", grad, ref_grad, device, dtype, rtol,
                                 atol * trial.layer.grad_atol_scale))
    for name, ref_state in trial.ref_state.items():
        got = trial.inputs.tensors[name]
        found.append(compare(f"state {name}", got, ref_state, device, got.dtype, rtol, atol))
    for name, original in before.tensors.items():
        if name not in trial.ref_state and not _same(trial.inputs.tensors[name], original):
            found.append(Comparison(f"input {name}", float("nan"), float("nan"),
                                    f"input {name} was modified in place"))
    return found


def check(fn: Callable[..., Any], layer: Layer, params: Params, seeds: list[int],
          dtype: torch.dtype, device: str, mode: str,
          libraries: Collection[str] | None = None) -> tuple[Verdict, Trial]:
    """Run ``fn`` on fresh inputs for each seed; stop at the first failing trial.

    ``libraries``: what ``fn``'s float32 math goes through (``Impl.libraries``), which decides
    its tolerance on CUDA. Returns the verdict and the first trial (whose inputs the timing
    reuses).
    """
    verdict, first = Verdict(), None
    for seed in seeds:
        trial = make_trial(layer, params, seed, dtype, device, mode)
        first = first or trial
        for comparison in check_trial(fn, trial, device, dtype, libraries):
            verdict.add(comparison)
        if verdict.problems:
            break
    assert first is not None, "check needs at least one seed"
    return verdict, first


def _same(a: Tensor, b: Tensor) -> bool:
    return bool(torch.equal(a, b) or (a.is_floating_point() and torch.allclose(
        a, b, rtol=0, atol=0, equal_nan=True)))

"""Registry of layers and their interchangeable implementations.

A *layer* says what is computed: its parameter schema, how to build seeded inputs, its reference,
and its FLOP and byte formulas. An *implementation* says how: one pure function, registered with
``@register_impl(layer, name, ...)`` and returned unchanged so tests can call it directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

Params = Mapping[str, int]
MODES = ("fwd", "fwdbwd", "train")
DEVICES = ("cpu", "cuda", "mps")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
DTYPE_NAMES = {"float32": torch.float32, "float64": torch.float64,
               "bfloat16": torch.bfloat16, "float16": torch.float16}

#: the libraries an implementation's float32 math can go through on CUDA, each with its own TF32
#: switch: cuBLAS (matmul, bmm, einsum, linear), cuDNN convolutions, cuDNN RNNs
LIBRARIES = ("cublas", "cudnn_conv", "cudnn_rnn")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class CaseInputs:
    """Everything one call of an implementation takes.

    An implementation is called with ``args``: the ``tensors`` and ``static`` values as keyword
    arguments, except the tensors named in ``loss_only`` (e.g. a classifier's targets), which
    only the layer's ``loss`` sees. ``grad`` names the tensors that receive a gradient in
    ``fwdbwd`` mode; ``state`` names tensors the layer updates in place (e.g. BatchNorm running
    statistics), compared after the call.
    """

    tensors: dict[str, Tensor]
    static: dict[str, Any] = field(default_factory=dict)
    grad: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    loss_only: tuple[str, ...] = ()

    @property
    def args(self) -> dict[str, Any]:
        """The keyword arguments of one call of an implementation (or of the reference)."""
        return {**{n: t for n, t in self.tensors.items() if n not in self.loss_only},
                **self.static}

    def to(self, dtype: torch.dtype, device: torch.device | str,
           copy: bool = False) -> CaseInputs:
        """Floating tensors cast to ``dtype`` and moved to ``device``; others only moved.

        With ``copy``, every tensor is a new one even where nothing changes.
        """
        moved = {
            name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype,
                       copy=copy)
            for name, t in self.tensors.items()
        }
        return dataclasses.replace(self, tensors=moved, static=dict(self.static))

    def clone(self) -> CaseInputs:
        tensors = {n: t.detach().clone() for n, t in self.tensors.items()}
        return dataclasses.replace(self, tensors=tensors, static=dict(self.static))


class Layer(ABC):
    """One operation of the course notes, with its parameter schema and analytical costs."""

    name: str
    title: str
    params: tuple[str, ...]
    #: where the layer comes in the course notes: the order of ``list`` and ``bench all``
    order: ClassVar[int] = 1000
    #: short prefix of each parameter in case labels, e.g. ``{"C_in": "Cin"}``
    labels: ClassVar[Mapping[str, str]] = {}
    #: what the layer offers: ``fwd``, ``fwdbwd``, and ``train`` (one SGD step) where the layer
    #: defines ``loss``
    modes: ClassVar[tuple[str, ...]] = ("fwd", "fwdbwd")
    #: names of the outputs when the reference returns a tuple (e.g. ``("output", "attn")``);
    #: the first, always called "output", is the one back-propagated and measured
    output_names: ClassVar[tuple[str, ...]] = ("output",)
    #: factor on ``atol`` for gradients: deep stacks compute some gradients by cancelling large
    #: terms (e.g. the Transformer's query/key weights), so float32 rounding lands a few
    #: elements past the single-op tolerance for every implementation, PyTorch's included
    grad_atol_scale: ClassVar[float] = 1.0
    #: learning rate of the ``train`` mode's SGD step
    lr: ClassVar[float] = 0.1
    #: size parameters that must be >= 1 (``check``); None: every one of ``params``
    positive: ClassVar[tuple[str, ...] | None] = ()

    def label(self, params: Params) -> str:
        """A short stable label such as ``N64_Cin1_Cout8_H28_W28_k3_s1_p0``."""
        return "_".join(f"{self.labels.get(p, p)}{params[p]}" for p in self.params)

    def derived(self, params: Params, given: Collection[str]) -> Params:
        """``params`` completed from the parameters a user set (``given``): by default as is."""
        return params

    def check(self, params: Params) -> None:
        """Raise ``ValueError`` with a one-line reason if ``params`` make no sense."""
        missing = [p for p in self.params if p not in params]
        if missing:
            raise ValueError(f"{self.name}: missing size parameter(s) {', '.join(missing)}")
        unknown = [p for p in params if p not in self.params]
        if unknown:
            raise ValueError(f"{self.name}: unknown size parameter(s) {', '.join(unknown)}; "
                             f"expected {', '.join(self.params)}")
        for p in self.params if self.positive is None else self.positive:
            if params[p] < 1:
                raise ValueError(f"{self.name}: {p} must be >= 1, got {params[p]}")

    def loss(self, output: Tensor, tensors: Mapping[str, Tensor]) -> Tensor:
        """The scalar loss of ``train`` mode, from the output and the inputs (e.g. the targets
        named in ``CaseInputs.loss_only``)."""
        raise TypeError(f"layer {self.name} has no train mode")

    @abstractmethod
    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        """Seeded random inputs and weights in float64 on the CPU (never zeros or constants)."""

    @abstractmethod
    def reference(self, **kwargs: Any) -> Tensor:
        """The reference computation; called with float64 CPU inputs."""

    @abstractmethod
    def flops(self, params: Params, mode: str) -> int:
        """Dense floating-point operations of one call (a multiply-add counts 2)."""

    @abstractmethod
    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        """Minimum memory traffic: each input, weight, output (and gradient) touched once."""

    @abstractmethod
    def calibration_params(self, params: Params) -> dict[str, int]:
        """A much smaller size of the same structure, to measure a naive loop's cost cheaply."""


@dataclass(frozen=True)
class Impl:
    """One registered way to compute a layer."""

    layer: str
    name: str
    fn: Callable[..., Any]
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    modes: frozenset[str]
    naive: bool
    compilable: bool
    source: str
    notes: str = ""
    #: the registered implementations this one is composed of, as ``(layer, impl)`` pairs
    #: (a CNN family's conv, bn, pool and linear; an encoder's attention)
    parts: tuple[tuple[str, str], ...] = ()
    #: what its float32 math goes through on CUDA (``LIBRARIES``): whose TF32 switch decides
    #: its tolerance and the peak of its roofline
    libraries: tuple[str, ...] = ("cublas",)

    @property
    def description(self) -> str:
        return (inspect.getdoc(self.fn) or "").split("\n")[0]

    def unsupported(self, device: str, dtype: torch.dtype, mode: str, compile_mode: str) -> str:
        """Why this implementation cannot run the combination, or ``""`` if it can."""
        if torch.device(device).type not in self.devices:
            return f"{self.name} does not support device {device}"
        if dtype not in self.dtypes:
            return f"{self.name} does not support dtype {dtype_name(dtype)}"
        if mode not in self.modes:
            return f"{self.name} does not support mode {mode}"
        if compile_mode != "none" and not self.compilable:
            return (f"{self.name} is not compiled: torch.compile would trace and unroll "
                    "every Python loop iteration")
        return ""


class Unsupported(Exception):
    """Raised by an implementation for a case outside what it can do (the case is ``skipped``).

    For limits that depend on the inputs, not on the device, dtype or mode that ``register_impl``
    declares: e.g. a FlashAttention backend that takes no mask.
    """


class RegistryError(ValueError):
    """A registration that cannot be accepted (unknown layer, duplicate name, empty file)."""


Deriver = Callable[[Impl], None]


class Registry:
    """Layers by name, and their implementations by ``(layer, name)``, in registration order."""

    def __init__(self) -> None:
        self._layers: dict[str, Layer] = {}
        self._impls: dict[str, dict[str, Impl]] = {}
        self._derivers: dict[str, list[Deriver]] = {}

    def add_layer(self, layer: Layer) -> Layer:
        if layer.name in self._layers:
            raise RegistryError(f"layer {layer.name!r} is already registered")
        self._layers[layer.name] = layer
        self._impls[layer.name] = {}
        return layer

    def add_impl(self, impl: Impl, replace: bool = False) -> None:
        """Register ``impl``; ``replace`` swaps out one of the same name (tests do, in a
        ``scoped`` block). Derived implementations follow (see ``derive``)."""
        if impl.layer not in self._layers:
            raise RegistryError(f"{impl.source}: unknown layer {impl.layer!r} "
                                f"(choose from {', '.join(self._layers)})")
        if impl.name in self._impls[impl.layer] and not replace:
            raise RegistryError(f"{impl.source}: implementation {impl.layer}/{impl.name} "
                                "is already registered")
        self._impls[impl.layer][impl.name] = impl
        for make in self._derivers.get(impl.layer, []):
            make(impl)

    def derive(self, layer: str, make: Deriver) -> None:
        """Call ``make(impl)`` for every implementation of ``layer``, those registered now and
        those registered later (a user's ``--impl-file`` included): how the encoder, decoder
        and transformer get one implementation per attention implementation."""
        self._derivers.setdefault(layer, []).append(make)
        for impl in list(self._impls.get(layer, {}).values()):
            make(impl)

    def layer(self, name: str) -> Layer:
        if name not in self._layers:
            raise KeyError(f"unknown layer {name!r} (choose from {', '.join(self._layers)})")
        return self._layers[name]

    def layers(self) -> list[Layer]:
        """Every layer in the notes' order (``Layer.order``), then by registration."""
        return sorted(self._layers.values(), key=lambda layer: layer.order)

    def impls(self, layer: str) -> list[Impl]:
        return list(self._impls[self.layer(layer).name].values())

    def impl(self, layer: str, name: str) -> Impl:
        impls = self._impls[self.layer(layer).name]
        if name not in impls:
            raise KeyError(f"unknown implementation {name!r} of {layer} "
                           f"(choose from {', '.join(impls)})")
        return impls[name]

    def impl_order(self) -> list[str]:
        """Every implementation name once, in the order the layers register them: the order of
        the reports' legends (colours go by name: ``reports.style``)."""
        return list(dict.fromkeys(i.name for layer in self.layers() for i in self.impls(
            layer.name)))

    @contextlib.contextmanager
    def scoped(self) -> Iterator[Registry]:
        """Registrations inside the block are undone at its end (for tests)."""
        layers, derivers = dict(self._layers), {k: list(v) for k, v in self._derivers.items()}
        impls = {k: dict(v) for k, v in self._impls.items()}
        try:
            yield self
        finally:
            self._layers, self._impls, self._derivers = layers, impls, derivers

    def load_file(self, path: str | Path) -> list[Impl]:
        """Import a user's Python file; return the implementations it registered.

        Raises ``RegistryError`` with a one-line reason when the file does not import, registers
        nothing, or registers a name that is taken.
        """
        path = Path(path)
        before = {(i.layer, i.name) for layer in self._impls.values() for i in layer.values()}
        if not path.is_file():
            raise RegistryError(f"--impl-file {path}: no such file")
        module_name = f"layerbench_user_{path.stem}_{abs(hash(path.resolve()))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise RegistryError(f"--impl-file {path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"--impl-file {path} does not import: "
                                f"{type(exc).__name__}: {exc}") from exc
        added = [i for layer in self._impls.values() for i in layer.values()
                 if (i.layer, i.name) not in before]
        if not added:
            raise RegistryError(f"--impl-file {path} registers no implementation "
                                "(decorate a function with @register_impl(layer, name))")
        return added


REGISTRY = Registry()


def register_layer(layer: Layer) -> Layer:
    """Add a layer instance to the registry; returns it."""
    return REGISTRY.add_layer(layer)


def register_impl(
    layer: str,
    name: str,
    *,
    devices: tuple[str, ...] = DEVICES,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
    modes: tuple[str, ...] = MODES,
    naive: bool = False,
    compilable: bool | None = None,
    notes: str = "",
    parts: tuple[tuple[str, str], ...] = (),
    libraries: tuple[str, ...] | None = None,
    replace: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as implementation ``name`` of ``layer``; the function is returned unchanged.

    Args:
        devices, dtypes, modes: what the implementation supports; other combinations are
            recorded as ``skipped`` with the reason.
        naive: a slow Python-loop implementation; its cost is predicted before it runs so a case
            over the time budget is skipped instead of running for minutes.
        compilable: whether ``torch.compile`` makes sense (default: not for naive loops, which
            dynamo would unroll).
        notes: what a user should know, shown by ``list`` (e.g. "returns no attention weights").
        parts: the registered ``(layer, impl)`` implementations this one is made of.
        libraries: what its float32 math goes through on CUDA (``LIBRARIES``; e.g.
            ``("cudnn_conv",)`` for ``F.conv2d``); default: its parts' libraries, or cuBLAS.
        replace: take the place of an implementation of the same name (derived
            implementations follow their base; tests swap one in a ``REGISTRY.scoped()`` block).
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        source = inspect.getsourcefile(fn) or "<unknown>"
        REGISTRY.add_impl(Impl(
            layer=layer, name=name, fn=fn, devices=frozenset(devices),
            dtypes=frozenset(dtypes), modes=frozenset(modes), naive=naive,
            compilable=(not naive) if compilable is None else compilable,
            source=source, notes=notes, parts=parts,
            libraries=_libraries(source, libraries, parts),
        ), replace=replace)
        return fn

    return wrap


def _libraries(source: str, libraries: tuple[str, ...] | None,
               parts: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """``libraries`` checked, or by default those of the registered ``parts``, or cuBLAS."""
    if libraries is None:
        found: list[str] = []
        for layer, impl in parts:
            with contextlib.suppress(KeyError):  # a part not registered adds nothing
                found += REGISTRY.impl(layer, impl).libraries
        return tuple(dict.fromkeys(found)) or ("cublas",)
    if unknown := [lib for lib in libraries if lib not in LIBRARIES]:
        raise RegistryError(f"{source}: unknown librar{'ies' if len(unknown) > 1 else 'y'} "
                            f"{', '.join(map(repr, unknown))} (choose from "
                            f"{', '.join(LIBRARIES)})")
    return tuple(libraries)

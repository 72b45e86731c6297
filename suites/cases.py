"""Cases: one (layer, impl, compile, params, device, dtype, mode) each, planned from a config."""

from __future__ import annotations

import itertools

from impls.registry import REGISTRY, Params
from reports.record import Case
from reports.schema import BASELINE_IMPL
from suites.config import BenchConfig
from suites.devices import device
from suites.presets import preset_sizes


def new_case(layer: str, impl: str, compile_mode: str, size: Params, device_name: str,
             dtype: str, mode: str) -> Case:
    """The case of ``layer``'s implementation ``impl`` at ``size``, labelled by the layer."""
    spec = REGISTRY.layer(layer)
    return Case(layer, impl, compile_mode, tuple((p, size[p]) for p in spec.params),
                device_name, dtype, mode, spec.label(size))


def sizes_for(config: BenchConfig, layer: str) -> list[Params]:
    return [dict(config.size)] if config.size else preset_sizes(layer, config.preset)


def plan(config: BenchConfig) -> list[Case]:
    """Every case of the run (of its shard, ``config.shard``), grouped by size; each group
    starts with its eager builtin.

    The eager builtin is always run, as the baseline of ``speedup_vs_builtin``, even when
    ``--impl`` does not name it. Implementations made for other devices only (e.g. CUDA's SDPA
    backends on a CPU run) are left out unless ``--impl`` names them. Raises ``KeyError`` on an
    unknown name and ``ValueError`` on a size that makes no sense, before anything runs.
    """
    cases: list[Case] = []
    for layer_name in config.layers:
        layer = REGISTRY.layer(layer_name)
        names = _impl_names(config, layer_name)
        has_baseline = any(i.name == BASELINE_IMPL for i in REGISTRY.impls(layer_name))
        sizes = sizes_for(config, layer_name)
        for size in sizes:
            layer.check(size)
        modes = [m for m in config.modes if m in layer.modes]
        if not modes and len(config.layers) == 1:
            raise KeyError(f"layer {layer_name} has no mode {', '.join(config.modes)} "
                           f"(choose from {', '.join(layer.modes)})")
        for device_name, dtype, mode, size in itertools.product(
                config.devices, config.dtypes, modes, sizes):
            kind = device(device_name).kind
            group = [new_case(layer_name, name, compile_mode, size, device_name, dtype, mode)
                     for compile_mode in config.compile_modes for name in names
                     if config.impls or kind in REGISTRY.impl(layer_name, name).devices]
            if has_baseline:
                baseline = group[0].baseline
                group = [baseline] + [c for c in group if c != baseline]
            cases.extend(group)
    return shard(cases, *config.shard)


def family_key(case: Case) -> tuple[str, ...]:
    """A size family: the cases of one (layer, device, dtype, size), every mode. They run in
    one process on one machine (the forward's time is known to the fwdbwd case's checks) and
    stay together in a shard."""
    return (case.layer, case.device, case.dtype, case.label)


def families(cases: list[Case]) -> list[list[Case]]:
    """``cases`` by size family, each family in plan order, families in order of first case."""
    found: dict[tuple[str, ...], list[Case]] = {}
    for case in cases:
        found.setdefault(family_key(case), []).append(case)
    return list(found.values())


def shard(cases: list[Case], index: int, count: int) -> list[Case]:
    """The ``index``-th (from 1) of ``count`` shards of ``cases``: every ``count``-th size
    family in plan order, starting at the ``index``-th, so the same command line always gives
    the same partition and each shard gets small and large sizes alike."""
    if count == 1:
        return cases
    return [c for i, family in enumerate(families(cases)) if i % count == index - 1
            for c in family]


def _impl_names(config: BenchConfig, layer: str) -> list[str]:
    """The ``--impl`` names (with several layers: those this layer has), or all of the layer's."""
    known = [i.name for i in REGISTRY.impls(layer)]
    if not config.impls:
        return known
    if len(config.layers) == 1:
        for name in config.impls:
            REGISTRY.impl(layer, name)  # KeyError with the valid choices
        return list(config.impls)
    everywhere = {i.name for other in config.layers for i in REGISTRY.impls(other)}
    unknown = [n for n in config.impls if n not in everywhere]
    if unknown:
        raise KeyError(f"unknown implementation {unknown[0]!r} (no layer of this run has it)")
    return [n for n in config.impls if n in known]

"""Size presets per layer: data, not code paths.

Each layer has a module here (``suites/presets/<layer>.py``) with three names:
``NOTES`` (the configuration the course notes use, the base that ``--size`` overrides),
``PRESETS`` (``quick``, ``default`` and ``full`` lists of sizes, each including ``NOTES``) and
nothing else that matters. ``sizes(params, *rows)`` turns tuples into size dicts.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from impls.registry import Layer

PRESET_NAMES = ("quick", "default", "full")


def sizes(params: tuple[str, ...], *rows: tuple[int, ...]) -> list[dict[str, int]]:
    """``sizes(("N", "H"), (1, 28), (64, 28))`` -> ``[{"N": 1, "H": 28}, {"N": 64, "H": 28}]``."""
    return [dict(zip(params, row, strict=True)) for row in rows]


def _module(layer: str) -> ModuleType:
    try:
        return importlib.import_module(f"{__name__}.{layer}")
    except ModuleNotFoundError:
        raise KeyError(f"layer {layer!r} has no presets") from None


def notes_size(layer: str) -> dict[str, int]:
    """The configuration the course notes use for ``layer``."""
    return dict(_module(layer).NOTES)


def preset_table(layer: str) -> dict[str, list[dict[str, int]]]:
    """Every preset of ``layer``: name -> sizes."""
    return {name: [dict(size) for size in rows] for name, rows in _module(layer).PRESETS.items()}


def preset_sizes(layer: str, preset: str) -> list[dict[str, int]]:
    """The sizes of ``preset`` for ``layer``; ``KeyError`` with the valid choices otherwise."""
    if preset not in PRESET_NAMES:
        raise KeyError(f"unknown preset {preset!r} (choose from {', '.join(PRESET_NAMES)})")
    return preset_table(layer)[preset]


def parse_size(text: str, base: dict[str, int] | None = None,
               layer: Layer | None = None) -> dict[str, int]:
    """Parse ``k=v,k=v`` into integers, on top of ``base`` (e.g. the notes' size); ``layer``
    completes what follows from the keys given (``Layer.derived``).

    Raises ``ValueError`` with a one-line reason on malformed input.
    """
    size = dict(base or {})
    given = set()
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"malformed --size item {item!r}: expected key=value, e.g. N=8,H=32")
        try:
            size[key] = int(value)
        except ValueError:
            raise ValueError(f"malformed --size item {item!r}: {value!r} is not an integer"
                             ) from None
        given.add(key)
    return layer.derived(size, given) if layer is not None else size

"""Size presets per layer: data, not code paths.

Every preset of a layer includes the configuration the course notes use (for conv, MyCNN's first
layer on MNIST: N=64, C_in=1, C_out=8, 28x28, k=3, stride 1, padding 0).
"""

from __future__ import annotations

PRESET_NAMES = ("quick", "default", "full")

_CONV = ("N", "C_in", "C_out", "H", "W", "k", "stride", "padding")


def _conv(*sizes: tuple[int, ...]) -> list[dict[str, int]]:
    return [dict(zip(_CONV, size, strict=True)) for size in sizes]


_MNIST = (64, 1, 8, 28, 28, 3, 1, 0)  # MyCNN's conv on a batch of 64 MNIST digits

PRESETS: dict[str, dict[str, list[dict[str, int]]]] = {
    "conv": {
        # seconds: tiny enough for the five loops, plus the notes' size
        "quick": _conv(
            (2, 3, 4, 10, 9, 3, 2, 1),  # non-square, stride 2, padding 1
            _MNIST,
        ),
        # ~0.1 MFLOP to ~1.8 GFLOP forward: four orders of magnitude
        "default": _conv(
            (1, 1, 8, 28, 28, 3, 1, 0),  # one MNIST digit: small enough for the loops
            _MNIST,
            (32, 8, 16, 28, 28, 3, 1, 1),  # "same" padding
            (32, 16, 32, 32, 32, 5, 1, 2),  # 5x5, same padding
            (8, 256, 256, 14, 14, 1, 1, 0),  # pointwise 1x1
            (16, 64, 128, 56, 56, 3, 2, 1),  # stride-2 downsampling
        ),
        "full": _conv(
            (1, 1, 8, 28, 28, 3, 1, 0),
            _MNIST,
            (32, 8, 16, 28, 28, 3, 1, 1),
            (32, 16, 32, 32, 32, 5, 1, 2),
            (8, 256, 256, 14, 14, 1, 1, 0),
            (16, 64, 128, 56, 56, 3, 2, 1),
            (32, 64, 64, 56, 56, 3, 1, 1),  # ResNet stage 1
            (16, 256, 256, 14, 14, 3, 1, 1),  # ResNet stage 3
            (32, 3, 64, 224, 224, 7, 2, 3),  # ResNet stem
        ),
    },
}


#: the configuration the notes use, per layer: the base that ``--size`` overrides
NOTES_SIZES: dict[str, dict[str, int]] = {"conv": dict(zip(_CONV, _MNIST, strict=True))}


def preset_sizes(layer: str, preset: str) -> list[dict[str, int]]:
    """The sizes of ``preset`` for ``layer``; ``KeyError`` with the valid choices otherwise."""
    if preset not in PRESET_NAMES:
        raise KeyError(f"unknown preset {preset!r} (choose from {', '.join(PRESET_NAMES)})")
    if layer not in PRESETS:
        raise KeyError(f"layer {layer!r} has no presets")
    return [dict(size) for size in PRESETS[layer][preset]]


def parse_size(text: str, base: dict[str, int] | None = None) -> dict[str, int]:
    """Parse ``k=v,k=v`` into integers, on top of ``base`` (e.g. the notes' size).

    Raises ``ValueError`` with a one-line reason on malformed input.
    """
    size = dict(base or {})
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
    return size

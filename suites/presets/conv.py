"""Conv2d sizes: N, C_in, C_out, H, W, k, stride, padding."""

from impls.conv import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

NOTES = sizes(PARAMS, (64, 1, 8, 28, 28, 3, 1, 0))[0]  # MyCNN's conv on 64 MNIST digits

PRESETS = {
    # seconds: tiny enough for the five loops, plus the notes' size
    "quick": sizes(PARAMS,
        (2, 3, 4, 10, 9, 3, 2, 1),  # non-square, stride 2, padding 1
        (64, 1, 8, 28, 28, 3, 1, 0),
    ),
    # ~10 kFLOP to ~1.8 GFLOP forward: five orders of magnitude
    "default": sizes(PARAMS,
        (1, 1, 4, 14, 14, 3, 1, 0),  # with the next, two sizes for the loops: their growth
        (1, 1, 8, 28, 28, 3, 1, 0),  # one MNIST digit: small enough for the loops
        (64, 1, 8, 28, 28, 3, 1, 0),
        (32, 8, 16, 28, 28, 3, 1, 1),  # "same" padding
        (32, 16, 32, 32, 32, 5, 1, 2),  # 5x5, same padding
        (8, 256, 256, 14, 14, 1, 1, 0),  # pointwise 1x1
        (16, 64, 128, 56, 56, 3, 2, 1),  # stride-2 downsampling
    ),
    "full": sizes(PARAMS,
        (1, 1, 8, 28, 28, 3, 1, 0),
        (64, 1, 8, 28, 28, 3, 1, 0),
        (32, 8, 16, 28, 28, 3, 1, 1),
        (32, 16, 32, 32, 32, 5, 1, 2),
        (8, 256, 256, 14, 14, 1, 1, 0),
        (16, 64, 128, 56, 56, 3, 2, 1),
        (32, 64, 64, 56, 56, 3, 1, 1),  # ResNet stage 1
        (16, 256, 256, 14, 14, 3, 1, 1),  # ResNet stage 3
        (32, 3, 64, 224, 224, 7, 2, 3),  # ResNet stem
    ),
}

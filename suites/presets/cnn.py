"""MyCNN sizes: N, C_in, C_out, H, W, training (BatchNorm with batch statistics = 1, eval = 0).

The 3x3 conv, the 2x2 pool and the 10 classes are the notes' and fixed; fc's in_features follow
from the sizes (C_out * ((H - 2) // 2) * ((W - 2) // 2)).
"""

from impls.cnn import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

NOTES = sizes(PARAMS, (64, 1, 8, 28, 28, 1))[0]  # a batch of 64 MNIST digits, training

PRESETS = {
    # seconds: tiny enough for the loops family in both BatchNorm modes, plus the notes' size
    "quick": sizes(PARAMS,
        (2, 1, 2, 8, 7, 1),
        (2, 2, 3, 7, 6, 0),
        (64, 1, 8, 28, 28, 1),
    ),
    # the batch grows 1 -> 256, then the channels and the image (CIFAR-like 3x32x32, 64x64)
    "default": sizes(PARAMS,
        (1, 1, 4, 14, 14, 1),  # with the next, two sizes for the loops family: their growth
        (1, 1, 8, 28, 28, 1),  # one digit: small enough for the loops family
        (64, 1, 8, 28, 28, 1),
        (64, 1, 8, 28, 28, 0),  # inference: BatchNorm with running statistics
        (256, 1, 8, 28, 28, 1),
        (64, 3, 16, 32, 32, 1),
        (64, 3, 32, 64, 64, 1),
    ),
    "full": sizes(PARAMS,
        (1, 1, 8, 28, 28, 1),
        (64, 1, 8, 28, 28, 1),
        (64, 1, 8, 28, 28, 0),
        (256, 1, 8, 28, 28, 1),
        (64, 3, 16, 32, 32, 1),
        (64, 3, 32, 64, 64, 1),
        (1024, 1, 8, 28, 28, 1),  # a large MNIST batch
        (128, 3, 64, 96, 96, 1),  # STL-10-sized images, 64 channels
    ),
}

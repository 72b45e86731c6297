"""MaxPool2d sizes: N, C, H, W, k (stride = k, no padding, floor mode)."""

from impls.pool import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

NOTES = sizes(PARAMS, (64, 8, 26, 26, 2))[0]  # MyCNN's nn.MaxPool2d(2): 26x26 -> 13x13

PRESETS = {
    # seconds: tiny sizes (k not dividing H or W, k = 3) and the notes' size
    "quick": sizes(PARAMS,
        (2, 3, 7, 6, 2),  # odd H: the last row is dropped
        (2, 3, 8, 7, 3),
        (64, 8, 26, 26, 2),
    ),
    # 5 thousand to 6.4 million input elements: grows in N, C and spatial size
    "default": sizes(PARAMS,
        (1, 8, 26, 26, 2),  # one MNIST digit
        (64, 8, 26, 26, 2),
        (32, 64, 28, 28, 2),
        (32, 64, 56, 56, 2),
        (16, 256, 28, 28, 2),  # many channels, small maps
        (32, 64, 57, 57, 3),  # 3x3 windows
    ),
    "full": sizes(PARAMS,
        (1, 8, 26, 26, 2),
        (64, 8, 26, 26, 2),
        (32, 64, 28, 28, 2),
        (32, 64, 56, 56, 2),
        (16, 256, 28, 28, 2),
        (32, 64, 57, 57, 3),
        (32, 64, 112, 112, 2),  # ResNet after the stem
        (8, 512, 14, 14, 2),
    ),
}

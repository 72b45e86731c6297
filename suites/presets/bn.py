"""BatchNorm2d sizes: N, C, H, W, training (1: batch statistics, running stats updated; 0: eval)."""

from impls.bn import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

NOTES = sizes(PARAMS, (64, 8, 26, 26, 1))[0]  # MyCNN's bn after the 3x3 conv on 64 MNIST digits

PRESETS = {
    # seconds: tiny sizes (small N*H*W, where the biased running_var of the notes shows) and
    # the notes' size, each in train and eval
    "quick": sizes(PARAMS,
        (2, 3, 5, 4, 1),
        (2, 3, 5, 4, 0),
        (64, 8, 26, 26, 1),
        (64, 8, 26, 26, 0),
    ),
    # 5 thousand to 6.4 million elements: grows in N, C and spatial size
    "default": sizes(PARAMS,
        (1, 8, 26, 26, 1),  # one MNIST digit
        (64, 8, 26, 26, 1),
        (64, 8, 26, 26, 0),
        (32, 64, 28, 28, 1),
        (32, 64, 56, 56, 1),
        (32, 64, 56, 56, 0),
        (16, 256, 28, 28, 1),  # many channels, small maps
    ),
    "full": sizes(PARAMS,
        (1, 8, 26, 26, 1),
        (64, 8, 26, 26, 1),
        (64, 8, 26, 26, 0),
        (32, 64, 28, 28, 1),
        (32, 64, 56, 56, 1),
        (32, 64, 56, 56, 0),
        (16, 256, 28, 28, 1),
        (32, 64, 112, 112, 1),  # ResNet after the stem
        (32, 64, 112, 112, 0),
        (32, 512, 7, 7, 1),  # ResNet stage 4
    ),
}

"""What can be run: layers, their implementations, references and cost formulas.

Importing this package registers every built-in layer: each module here is imported, and each
layer module registers its layer and implementations (``Layer.order`` puts the layers in the
notes' order). A user's file registers its own implementations the same way::

    from impls import register_impl

    @register_impl("conv", "mine")
    def conv2d_mine(x, weight, bias, stride, padding): ...
"""

import importlib
import pkgutil

from impls.registry import (
    DTYPE_NAMES,
    MODES,
    REGISTRY,
    CaseInputs,
    Impl,
    Layer,
    RegistryError,
    Unsupported,
    register_impl,
    register_layer,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

# The notes' modules, each computing with a chosen implementation (``impl=``).
from impls.attention import ScaledDotProductAttention  # noqa: E402
from impls.bn import MyBatchNorm2d  # noqa: E402
from impls.cnn import MyCNN  # noqa: E402
from impls.conv import MyConv2d  # noqa: E402
from impls.ffn import PositionwiseFeedForward  # noqa: E402
from impls.mha import MultiHeadAttention  # noqa: E402
from impls.rnn import myRNN  # noqa: E402
from impls.transformer_modules import (  # noqa: E402
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    PositionalEncoding,
    Transformer,
)

__all__ = ["DTYPE_NAMES", "MODES", "REGISTRY", "CaseInputs", "Decoder", "DecoderLayer",
           "Encoder", "EncoderLayer", "Impl", "Layer", "MultiHeadAttention", "MyBatchNorm2d",
           "MyCNN", "MyConv2d", "PositionalEncoding", "PositionwiseFeedForward", "RegistryError",
           "ScaledDotProductAttention", "Transformer", "Unsupported", "myRNN", "register_impl",
           "register_layer"]

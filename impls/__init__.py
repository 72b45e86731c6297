"""What can be run: layers, their implementations, references and cost formulas.

Importing this package registers every built-in layer. A user's file registers its own
implementations the same way::

    from impls import register_impl

    @register_impl("conv", "mine")
    def conv2d_mine(x, weight, bias, stride, padding): ...
"""

from impls import conv
from impls.conv import MyConv2d
from impls.registry import (
    DTYPE_NAMES,
    MODES,
    REGISTRY,
    CaseInputs,
    Impl,
    Layer,
    register_impl,
    register_layer,
)

__all__ = ["DTYPE_NAMES", "MODES", "REGISTRY", "CaseInputs", "Impl", "Layer", "MyConv2d", "conv",
           "register_impl", "register_layer"]

"""Drop rates as Python floats, for ``torch.compile``."""
from mmcv.cnn.bricks.drop import DropPath
from torch import nn


def float_drop_rates(module: nn.Module) -> nn.Module:
    """Make every mmcv ``DropPath.drop_prob`` in ``module`` a Python float.

    mmpretrain's ``VisionTransformer`` spaces its stochastic-depth rates with
    ``np.linspace``, so each block's ``DropPath`` holds a ``numpy.float64``;
    ``torch.compile`` cannot trace arithmetic on a numpy scalar and breaks
    the graph at every ``DropPath`` (twice per block). The values are
    unchanged. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, DropPath):
            m.drop_prob = float(m.drop_prob)
    return module

"""Small shims that let mmengine 0.10.7 run on current torch / numpy.

Imported (and applied) by ``import mmum``; every change is scoped and listed
here so it can be dropped once upstream catches up.

1. ``torch.load`` defaults to ``weights_only=True`` since torch 2.6, while
   mmengine 0.10.7 saves (and then loads, e.g. on ``--resume``) checkpoints
   whose ``meta`` holds mmengine / numpy objects. Rather than turning the
   safety off globally, the few classes mmengine writes into its own
   checkpoints are added to torch's allow-list of safe globals.
"""
import torch

_SAFE = []


def _collect_safe_globals():
    import collections

    import numpy as np
    from mmengine.config import ConfigDict
    from mmengine.logging import HistoryBuffer

    safe = [HistoryBuffer, ConfigDict, collections.OrderedDict,
            collections.defaultdict, np.dtype, np.ndarray]
    # numpy scalars / arrays are pickled through these reconstructors
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    safe += [_reconstruct, scalar]
    safe += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64,
                                           np.int32, np.bool_, np.uint8)]
    return safe


def apply():
    """Install the shims (idempotent)."""
    if _SAFE or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    _SAFE.extend(_collect_safe_globals())
    torch.serialization.add_safe_globals(_SAFE)


apply()

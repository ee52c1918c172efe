"""Small shims that let mmengine 0.10.7 run on current torch / numpy.

Applied once by ``import mmum`` (every tool and every config with
``custom_imports=dict(imports=['mmum'])`` does that). Each shim is scoped and
listed here so it can be dropped once upstream catches up.

1. **Checkpoints under ``weights_only``.** Since torch 2.6, ``torch.load``
   defaults to ``weights_only=True``. mmengine 0.10.7 calls ``torch.load``
   without that argument when it resumes (``--resume``) or loads
   (``load_from``, ``init_cfg=dict(type='Pretrained')``), and a checkpoint
   written by its Runner holds more than tensors: the ``message_hub`` keeps
   the logged scalars in ``HistoryBuffer`` objects backed by numpy arrays.
   ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists exactly
   these globals in a Runner checkpoint (torch 2.14, numpy 2.4)::

       mmengine.logging.history_buffer.HistoryBuffer
       builtins.getattr                  # HistoryBuffer.__getstate__ pickles
                                         # its min/max/current/mean methods
       numpy._core.multiarray._reconstruct
       numpy._core.multiarray.scalar
       numpy.ndarray
       numpy.dtype

   Instead of turning the safety off (``weights_only=False`` or
   ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``), those globals are added to torch's
   allow-list, plus numpy's dtype classes and the numpy 1.x names
   (``numpy.core.multiarray.*``) of the reconstructors, so checkpoints written
   under numpy 1 load too. ``builtins.getattr`` is *not* allowed as such: the
   name is bound to :func:`_statistics_getattr`, which only resolves the
   statistics methods of ``HistoryBuffer`` and raises ``UnpicklingError`` for
   anything else. Every other global still makes ``torch.load`` fail, as torch
   intends; trust a file first, then load it with ``weights_only=False``.

Not shimmed, because no code path of mmum reaches them: numpy 2.4 removed
``np.in1d`` (used by mmpretrain's retrieval metrics) and ``np.float`` /
``np.long`` (mmdet's YouTube-VIS evaluation and text transforms).

Related CPU fallbacks live in :mod:`mmum.utils.dist` (gloo process group and
CPU DDP for ``tools/dist_train.sh`` without GPUs; ``AmpOptimWrapper``, which
mmengine only allows with CUDA, falls back to fp32 with a warning).
"""
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')
_APPLIED = []


def _statistics_getattr(obj, name, *default):
    """``getattr`` restricted to what mmengine's ``HistoryBuffer`` pickles:
    its statistics methods (``HistoryBuffer.min`` and so on)."""
    allowed = set(_DEFAULT_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed and not default:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'mmum allows getattr in a weights_only checkpoint only for '
        f'HistoryBuffer statistics {sorted(allowed)}, got '
        f'getattr({obj!r}, {name!r}). Load the file with weights_only=False '
        f'only if you trust its source.')


def safe_globals():
    """The globals that :func:`apply` adds to torch's allow-list."""
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in np.sctypeDict.values()]
    return [
        HistoryBuffer,
        (_statistics_getattr, 'builtins.getattr'),
        np.ndarray,
        np.dtype,
        *sorted(set(dtype_classes), key=lambda c: c.__name__),
        (_reconstruct, 'numpy._core.multiarray._reconstruct'),
        (_reconstruct, 'numpy.core.multiarray._reconstruct'),
        (scalar, 'numpy._core.multiarray.scalar'),
        (scalar, 'numpy.core.multiarray.scalar'),
    ]


def apply():
    """Install the shims (idempotent)."""
    if _APPLIED or not hasattr(torch.serialization, 'add_safe_globals'):
        return  # already done, or torch < 2.4 (which loads everything)
    torch.serialization.add_safe_globals(safe_globals())
    _APPLIED.append(True)


apply()

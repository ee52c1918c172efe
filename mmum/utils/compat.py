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

2. **Resizing Swin's relative-position tables without ``interp2d``.**
   mmpretrain 1.2 resizes a ``relative_position_bias_table`` of another
   window size (e.g. GreenMIM Swin-L: window 14 in pre-training, 7 in
   fine-tuning) with ``scipy.interpolate.interp2d``, removed in SciPy 1.14.
   :func:`resize_relative_position_bias_table` keeps mmpretrain's geometric
   grid and evaluates the same bicubic spline through
   ``RectBivariateSpline``; it replaces the function where mmpretrain's Swin
   and BEiT look it up.

Not shimmed, because no code path of mmum reaches them: numpy 2.4 removed
``np.in1d`` (used by mmpretrain's retrieval metrics) and ``np.float`` /
``np.long`` (mmdet's YouTube-VIS evaluation and text transforms).

Related CPU fallbacks live in :mod:`mmum.utils.dist` (gloo process group and
CPU DDP for ``tools/dist_train.sh`` without GPUs; ``AmpOptimWrapper``, which
mmengine only allows with CUDA, becomes ``mmum.CPUAmpOptimWrapper``: bf16
autocast on CPUs with native bf16, fp32 on others, see
:mod:`mmum.engine.optimizers.cpu_amp`).
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


def resize_relative_position_bias_table(src_shape, dst_shape, table,
                                        num_head):
    """mmpretrain's bias-table resize (same signature and geometric grid),
    with SciPy's ``RectBivariateSpline`` instead of the removed
    ``interp2d``: (src_shape**2, num_head) -> (dst_shape**2, num_head)."""
    from scipy.interpolate import RectBivariateSpline

    half = src_shape // 2
    # ratio q of the geometric offsets 1, 1+q, 1+q+q^2, ... so that the
    # source half-grid spans the destination half-grid
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2
        if (1 - q**half) / (1 - q) > dst_shape // 2:
            hi = q
        else:
            lo = q
    dis = np.cumsum([1] + [q**(i + 1) for i in range(half - 1)])
    coords = np.concatenate([-dis[::-1], [0], dis])
    t = dst_shape // 2.0
    new = np.arange(-t, t + 0.1, 1.0)
    out = []
    for i in range(num_head):
        z = table[:, i].view(src_shape, src_shape).float().cpu().numpy()
        spline = RectBivariateSpline(coords, coords, z, kx=3, ky=3)
        out.append(torch.from_numpy(spline(new, new)).float().reshape(-1, 1))
    return torch.cat(out, -1).to(table.device)


def _patch_bias_resize():
    import importlib
    for name in ('mmpretrain.models.utils.embed',
                 'mmpretrain.models.utils',
                 'mmpretrain.models.backbones.swin_transformer',
                 'mmpretrain.models.backbones.beit'):
        module = importlib.import_module(name)
        if hasattr(module, 'resize_relative_position_bias_table'):
            module.resize_relative_position_bias_table = \
                resize_relative_position_bias_table


def apply():
    """Install the shims (idempotent)."""
    if _APPLIED:
        return
    if hasattr(torch.serialization, 'add_safe_globals'):  # torch >= 2.4
        torch.serialization.add_safe_globals(safe_globals())
    try:
        from scipy import interpolate
        interpolate.interp2d(  # raises NotImplementedError on SciPy >= 1.14
            [0, 1, 2, 3], [0, 1, 2, 3], np.zeros((4, 4)), kind='cubic')
    except NotImplementedError:
        _patch_bias_resize()
    except Exception:
        pass
    _APPLIED.append(True)


apply()

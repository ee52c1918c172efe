"""Count what would make the host wait for the accelerator, without one.

The model runs on the ``meta`` device (shapes, no data), standing in for the
GPU; the host (CPU) keeps what the data pipeline made. Under
:func:`count_syncs` a ``TorchDispatchMode`` sees every aten op and records
the ones that, on a real device, stall the host until the device has caught
up (or copy between the two):

- ``item``: ``aten._local_scalar_dense`` of a device tensor (``.item()``,
  ``bool(t)``, ``int(t)``, ``if t.any():``);
- ``data_dependent``: ops whose output shape depends on device data
  (``nonzero``, ``masked_select``, ``unique``, boolean indexing, ...);
- ``device_to_host``: a device tensor copied to the host;
- ``blocking_host_to_device``: a host tensor copied to the device with
  ``non_blocking=False``, or from pageable (not pinned) memory, which CUDA
  also serialises with the stream; also ``torch.tensor(data, device=...)``.

A host-to-device copy with ``non_blocking=True`` from pinned memory is a
*transfer*, not a sync: :attr:`SyncLog.transfers` lists them so a test can
name the ones it plans (the data preprocessor's move of the batch).
``Tensor.pin_memory`` needs a CUDA driver, so inside :func:`count_syncs` it
marks the tensor as pinned instead (``is_pinned`` reads the mark).

To go on past a sync on ``meta`` the mode makes up a result: 0 / False for a
scalar (the branch a healthy check takes), an empty result for data-dependent
shapes, zeros for a device-to-host copy. Counts stay
exact; values after the first sync are not meant to be read.

API::

    with count_syncs() as log:           # model and inputs on 'meta'
        model.train_step(data, optim_wrapper)
    log.syncs       # [SyncEvent(kind, op, where), ...]: should be []
    log.transfers   # [Transfer(shape, dtype, non_blocking, pinned, where)]
    log.counts()    # {'item': 2, 'blocking_host_to_device': 4, ...}
    log.report()    # one line per event, for assertion messages
"""
import collections
import contextlib
import os.path as osp
import traceback
from typing import Dict, List, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
HOST = torch.device('cpu')

# ops whose output shape depends on the values of their input
DATA_DEPENDENT = {
    aten.nonzero.default, aten.masked_select.default,
    aten._unique.default, aten._unique2.default, aten.unique_dim.default,
    aten.unique_consecutive.default, aten.unique_dim_consecutive.default,
    aten.repeat_interleave.Tensor, aten.argwhere.default,
    aten.masked_scatter.default,
}
# the innermost frame in one of these is reported as where an event came from
_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
_OWN = (_ROOT + osp.sep, ) + tuple(
    osp.join('site-packages', d, '') for d in ('mmpretrain', 'mmengine',
                                                'mmcv', 'mmdet', 'mmseg'))


class SyncEvent(NamedTuple):
    kind: str
    op: str
    where: str


class Transfer(NamedTuple):
    shape: tuple
    dtype: torch.dtype
    non_blocking: bool
    pinned: bool
    where: str


def _where() -> str:
    """The innermost frame of mmum / mmpretrain / mmengine / tests."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        name = frame.filename
        if any(d in name for d in _OWN) and '_sync_count' not in name and \
                f'{osp.sep}.venv{osp.sep}' not in name:
            return f'{osp.basename(name)}:{frame.lineno} {frame.name}'
    return '?'


class SyncLog:

    def __init__(self) -> None:
        self.syncs: List[SyncEvent] = []
        self.transfers: List[Transfer] = []

    def counts(self) -> Dict[str, int]:
        return dict(collections.Counter(e.kind for e in self.syncs))

    def report(self) -> str:
        lines = [f'{e.kind:24s} {e.op:32s} {e.where}' for e in self.syncs]
        lines += [f'transfer {tuple(t.shape)} {t.dtype} non_blocking='
                  f'{t.non_blocking} pinned={t.pinned} {t.where}'
                  for t in self.transfers]
        return '\n'.join(lines)


def _is_device(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device != HOST


_PINNED = '_sync_count_pinned'


def _marked_pinned(t: torch.Tensor) -> bool:
    return getattr(t, _PINNED, False)


class _Counter(TorchDispatchMode):

    def __init__(self, log: SyncLog) -> None:
        super().__init__()
        self.log = log

    def sync(self, kind: str, func) -> None:
        self.log.syncs.append(SyncEvent(kind, str(func), _where()))

    def h2d(self, src: torch.Tensor, non_blocking: bool, func) -> None:
        if non_blocking and _marked_pinned(src):
            self.log.transfers.append(Transfer(
                tuple(src.shape), src.dtype, True, True, _where()))
        else:
            self.sync('blocking_host_to_device', func)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and _is_device(args[0]):
            self.sync('item', func)
            dtype = args[0].dtype
            return False if dtype == torch.bool else (
                0.0 if dtype.is_floating_point else 0)
        if func in DATA_DEPENDENT and _is_device(args[0]):
            self.sync('data_dependent', func)
            return _empty_like_result(func, args)
        if func in (aten.index.Tensor, aten.index_put.default,
                    aten.index_put_.default, aten._index_put_impl_.default) \
                and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                        and _is_device(i) for i in args[1] or ()):
            self.sync('data_dependent', func)
            args = (args[0], [
                i.new_empty(0, dtype=torch.long).expand(0) if isinstance(
                    i, torch.Tensor) and i.dtype == torch.bool else i
                for i in args[1]
            ], *args[2:])
            return func(*args, **kwargs)
        if func is aten._to_copy.default:
            dst = kwargs.get('device')
            src = args[0]
            if dst is not None and torch.device(dst) != src.device:
                if _is_device(src) and torch.device(dst) == HOST:
                    self.sync('device_to_host', func)
                    return torch.zeros(src.shape, dtype=kwargs.get(
                        'dtype') or src.dtype)
                if not _is_device(src):
                    self.h2d(src, kwargs.get('non_blocking', False), func)
        if func is aten.copy_.default:
            dst, src = args[:2]
            if _is_device(src) and not _is_device(dst):
                self.sync('device_to_host', func)
                return dst.zero_()
            if _is_device(dst) and not _is_device(src) and src.dim():
                self.h2d(src, args[2] if len(args) > 2 else kwargs.get(
                    'non_blocking', False), func)
        return func(*args, **kwargs)


def _empty_like_result(func, args):
    x = args[0]
    if func in (aten.nonzero.default, aten.argwhere.default):
        return x.new_empty((0, x.dim()), dtype=torch.long)
    if func is aten.masked_scatter.default:
        return torch.empty_like(x)
    if func in (aten._unique.default, aten._unique2.default,
                aten.unique_dim.default, aten.unique_consecutive.default,
                aten.unique_dim_consecutive.default):
        return (x.new_empty(0), x.new_empty(x.shape, dtype=torch.long),
                x.new_empty(0, dtype=torch.long))
    return x.new_empty(0)


@contextlib.contextmanager
def count_syncs():
    """Record the syncs and transfers of the code run inside; see the module
    docstring. Yields a :class:`SyncLog`."""
    log = SyncLog()
    real_pin, real_is_pinned, real_tensor = (
        torch.Tensor.pin_memory, torch.Tensor.is_pinned, torch.tensor)

    def pin_memory(self, *args, **kwargs):
        out = self.clone()
        setattr(out, _PINNED, True)
        return out

    def is_pinned(self, *args, **kwargs):
        return _marked_pinned(self)

    def tensor(data, *args, **kwargs):
        device = kwargs.get('device')
        if device is not None and torch.device(device) != HOST:
            log.syncs.append(SyncEvent('blocking_host_to_device',
                                       'torch.tensor', _where()))
        return real_tensor(data, *args, **kwargs)

    torch.Tensor.pin_memory, torch.Tensor.is_pinned = pin_memory, is_pinned
    torch.tensor = tensor
    try:
        with _Counter(log):
            yield log
    finally:
        torch.Tensor.pin_memory, torch.Tensor.is_pinned = (real_pin,
                                                           real_is_pinned)
        torch.tensor = real_tensor

"""GreenMIM's training step forces no host-device synchronisation: the mask
and every index of the step are planned on the host by the data
preprocessor and cross to the device in ONE planned, non-blocking copy.

Proved without a GPU: the model runs on torch's ``meta`` device (whose
tensors hold no data, so any read-back or data-dependent shape fails) under a
dispatch mode that records every operation which would synchronise on a real
device: ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``), ops with
data-dependent output shapes (``nonzero``, ``unique``, boolean masking ...),
copies of device tensors to the host, and host-to-device copies (blocking or
not). Host-only work (the planning itself) is not recorded."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmpretrain.structures import DataSample
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import mmum  # noqa: F401
from mmum.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
aten = torch.ops.aten

# ops whose result (a value or a shape) needs the device's data on the host
SYNC_OPS = {
    aten._local_scalar_dense, aten.nonzero, aten.masked_select,
    aten.unique_consecutive, aten._unique2, aten.unique_dim, aten.equal,
    aten.is_nonzero
}


class SyncCounter(TorchDispatchMode):
    """Records ``(kind, op, detail)`` for every op touching a non-CPU tensor
    that would synchronise on a real device; ``kind`` is ``'sync'`` (a read
    of device data / a data-dependent shape), ``'to_host'`` or
    ``'to_device'`` (a copy across; detail: shape, dtype, non_blocking)."""

    def __init__(self):
        super().__init__()
        self.records = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = [t for t in tree_flatten((args, kwargs))[0]
               if isinstance(t, torch.Tensor)]
        op, name = func.overloadpacket, str(func.overloadpacket)
        on_device = [t for t in ins if t.device.type != 'cpu']
        # recorded before the call: the meta device refuses some of them
        if op in (aten._to_copy, aten.copy_):
            src, dst = (args[0].device, torch.device(kwargs.get(
                'device', args[0].device))) if op is aten._to_copy else (
                    args[1].device, args[0].device)
            if src.type == 'cpu' and dst.type != 'cpu' and args[
                    0 if op is aten._to_copy else 1].dim():
                t = args[0] if op is aten._to_copy else args[1]
                self.records.append(
                    ('to_device', name, (tuple(t.shape), t.dtype,
                                         kwargs.get('non_blocking', False))))
            elif src.type != 'cpu' and dst.type == 'cpu':
                self.records.append(('to_host', name, None))
        elif on_device:
            bool_index = op in (aten.index, aten.index_put,
                                aten.index_put_) and any(
                t.dtype == torch.bool for t in tree_flatten(args[1:])[0]
                if isinstance(t, torch.Tensor))
            if op in SYNC_OPS or bool_index:
                self.records.append(('sync', name, None))
            # a host tensor in a device op is copied over (0-dim host
            # tensors are passed to kernels as scalars: no copy)
            host = [t for t in ins if t.device.type == 'cpu' and t.dim()]
            if host:
                self.records.append(('to_device', name, (tuple(
                    host[0].shape), host[0].dtype, False)))
        return func(*args, **kwargs)


def _swin():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'green_mim',
                                   'swin_b_800e.py'))
    m = cfg.model
    m.backbone.update(arch=dict(embed_dims=16, depths=(2, 2, 2, 2),
                                num_heads=(1, 1, 2, 2)),
                      img_size=128, window_size=4)
    m.neck.update(num_patches=16, embed_dim=128, decoder_embed_dim=32,
                  decoder_num_heads=2)
    m.data_preprocessor = cfg.data_preprocessor  # as the Runner merges it
    return m


def _twins():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'green_mim',
                                   'twins_l_800e.py'))
    m = cfg.model
    m.backbone.arch = dict(
        embed_dims=[8, 16, 32, 64], depths=[2, 2, 2, 2],
        num_heads=[1, 1, 2, 2], patch_sizes=[4, 2, 2, 2],
        strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
        sr_ratios=[8, 4, 2, 1], window_sizes=[4, 4, 4, 4])
    m.neck.update(num_patches=16, embed_dim=64, decoder_embed_dim=32,
                  decoder_num_heads=2)
    m.data_preprocessor = cfg.data_preprocessor
    return m


@pytest.mark.parametrize('build', [_swin, _twins], ids=['swin', 'twins'])
def test_step_has_one_planned_transfer_and_no_sync(build):
    torch.manual_seed(0)
    model = MODELS.build(build()).to('meta')
    model.train()
    B = 2
    data = dict(inputs=torch.randint(0, 256, (B, 3, 128, 128),
                                     dtype=torch.uint8),
                data_samples=[DataSample() for _ in range(B)])
    with SyncCounter() as counter:  # one training step, no optimiser
        data = model.data_preprocessor(data, True)
        losses = model._run_forward(data, mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()
    assert loss.device.type == 'meta'
    syncs = [r for r in counter.records if r[0] != 'to_device']
    copies = [r[2] for r in counter.records if r[0] == 'to_device']
    assert syncs == []
    # the data preprocessor's move of the batch, then GreenMIM's planned
    # transfer: plan_to_device's one byte buffer (mask, grouping layouts,
    # gather / merge / sparse-convolution indices, decoder placement)
    assert len(copies) == 2, counter.records
    assert copies[0] == ((B, 3, 128, 128), torch.uint8, True)
    (size, ), dtype, non_blocking = copies[1]
    assert dtype == torch.uint8 and non_blocking
    assert set(data['plan']) == {'mask', 'backbone', 'decoder'}
    views = [t for t in tree_flatten(data['plan'])[0]
             if isinstance(t, torch.Tensor)]
    assert all(t.device.type == 'meta' for t in views)
    # every tensor of the plan is a view of that one buffer
    assert {t.untyped_storage().nbytes() for t in views} == {size}


def test_counter_sees_what_would_sync():
    """The counter is not blind: each kind of sync is recorded."""
    x = torch.zeros(4, 3, device='meta')
    with SyncCounter() as counter:
        for f in (lambda: x.to('cpu'), lambda: x.sum().item(),
                  lambda: x.nonzero(), lambda: x[x > 0],
                  lambda: torch.ones(3).to('meta', non_blocking=True),
                  lambda: x + torch.ones(3)):
            try:  # the meta device refuses to read data or to copy it out
                f()
            except (NotImplementedError, RuntimeError):
                pass
    assert [r[:2] for r in counter.records] == [
        ('to_host', 'aten._to_copy'), ('sync', 'aten._local_scalar_dense'),
        ('sync', 'aten.nonzero'), ('sync', 'aten.index'),
        ('to_device', 'aten._to_copy'), ('to_device', 'aten.add')]
    assert counter.records[4][2] == ((3, ), torch.float32, True)

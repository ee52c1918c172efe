"""A training step of each pre-training method never makes the host wait
for the device (issue 25, Deliver 2), shown without a GPU.

Each method's config is built with a tiny encoder, the model is moved to the
``meta`` device (the stand-in for the GPU), a batch comes from the config's
own pipeline (after image loading), ``default_collate`` and the dataloader's
pinning (``pin_memory=True`` in the configs), and ``train_step`` runs under
:func:`_sync_count.count_syncs`: data preprocessor, forward, loss,
backward and the optimizer step. Allowed are only the data preprocessor's
non-blocking copies of the batch from pinned memory (the images and one
batched tensor per mask field); every sync is listed in the failure message
with the line that caused it.
"""
import copy

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import default_collate
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS, TRANSFORMS
from torch.utils.data._utils.pin_memory import pin_memory

import mmum  # noqa: F401
from _sync_count import count_syncs

pytestmark = pytest.mark.usefixtures('one_thread')

SWIN_TINY = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
PVT_TINY = dict(embed_dims=[32, 32, 64, 64], depths=[1, 1, 2, 1],
                num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
TWINS_TINY = dict(embed_dims=[32, 32, 64, 64], depths=[1, 1, 2, 1],
                  num_heads=[1, 2, 2, 4], patch_sizes=[4, 2, 2, 2],
                  strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
                  sr_ratios=[8, 4, 2, 1], window_sizes=[7, 7, 7, 7])
VIT_TINY = dict(embed_dims=32, num_layers=4, num_heads=2,
                feedforward_channels=64)


def _um_mae(cfg, arch):
    cfg.model.backbone.arch = arch
    cfg.model.neck.update(embed_dim=256 if arch is SWIN_TINY else 64,
                          decoder_embed_dim=32, decoder_num_heads=2)


def _simmim(cfg, arch=SWIN_TINY, width=256):
    cfg.model.backbone.arch = arch
    cfg.model.neck.in_channels = width


def _um_vit(cfg):
    cfg.model.backbone.arch = VIT_TINY
    cfg.model.neck.update(embed_dim=32, decoder_embed_dim=32,
                          decoder_depth=1, decoder_num_heads=2)


def _local_mim_vit(cfg):
    cfg.model.backbone.update(arch=VIT_TINY, out_indices=(0, 1, 2, 3))
    cfg.model.neck.update(embed_dims=16, num_heads=2)


def _local_mim_swin(cfg):
    cfg.model.backbone.arch = SWIN_TINY
    cfg.model.neck.update(embed_dims=16, num_heads=2)


# method -> (config, shrink to a tiny encoder)
METHODS = {
    'um_mae_swin_t': ('configs/um_mae/swin_t_200e.py',
                      lambda c: _um_mae(c, SWIN_TINY)),
    'um_mae_pvt_s': ('configs/um_mae/pvt_s_200e.py',
                     lambda c: _um_mae(c, PVT_TINY)),
    'um_mae_vit_b': ('configs/um_mae/vit_b_200e.py', _um_vit),
    'simmim_swin_t': ('configs/simmim/swin_t_256_200e.py', _simmim),
    'simmim_pvt_s': ('configs/simmim/pvt_s_256_200e.py',
                     lambda c: _simmim(c, PVT_TINY, 64)),
    'simmim_twins_l': ('configs/simmim/twins_l_224_800e.py',
                       lambda c: _simmim(c, TWINS_TINY, 64)),
    'local_mim_vit': ('configs/vitfreeze/local_mim_vit_b_100e.py',
                      _local_mim_vit),
    'vitfreeze_vit': ('configs/vitfreeze/vit_b_100e.py', _local_mim_vit),
    'vitfreeze_swin_t': ('configs/vitfreeze/swin_t_100e.py',
                         _local_mim_swin),
}


def tiny_config(method):
    path, shrink = METHODS[method]
    cfg = Config.fromfile(path)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    shrink(cfg)
    return cfg


def build_meta_model(cfg):
    """The config's model as the Runner builds it (top-level
    ``data_preprocessor`` merged), on the ``meta`` device."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    model = MODELS.build(model_cfg)
    return model.to('meta')


def pipeline_batch(cfg, batch_size=2, seed=0):
    """A batch as the config's dataloader gives it: pipeline (after
    loading), collate, and pinning if the config asks for it."""
    rng = np.random.default_rng(seed)
    transforms = [TRANSFORMS.build(t)
                  for t in cfg.train_dataloader.dataset.pipeline[1:]]
    samples = []
    for _ in range(batch_size):
        img = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
        results = dict(img=img, img_shape=img.shape[:2],
                       ori_shape=img.shape[:2])
        for t in transforms:
            results = t(results)
        samples.append(results)
    batch = default_collate(samples)
    if cfg.train_dataloader.get('pin_memory'):
        batch = pin_memory(batch)  # the dataloader's pinning thread
    return batch


def train_step_log(method, batch_size=2):
    """The :class:`SyncLog` of one ``train_step`` of ``method`` on meta."""
    cfg = tiny_config(method)
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_meta_model(cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    optim_wrapper = OptimWrapper(optimizer)
    with count_syncs() as log:
        batch = pipeline_batch(cfg, batch_size)
        model.train_step(batch, optim_wrapper)
    return log


# the data preprocessor's planned copies: the images, then one tensor per
# mask field (UM-MAE: mask, secondary mask, visible index). A method that
# plans more on the host (GreenMIM) adds its count here, and in PLANNED_IN the
# file that moves it if that is not mmum/models/utils/data_preprocessor.py.
MASK_FIELDS = dict(um_mae_swin_t=3, um_mae_pvt_s=3, vitfreeze_swin_t=3,
                   simmim_swin_t=1, simmim_pvt_s=1, simmim_twins_l=1)
PLANNED_IN = {}


@pytest.mark.parametrize('method', sorted(METHODS))
def test_train_step_has_no_sync(method):
    log = train_step_log(method)
    assert not log.syncs, f'{method}: {log.counts()}\n{log.report()}'
    assert len(log.transfers) == 1 + MASK_FIELDS.get(method, 0), log.report()
    assert all(t.non_blocking and t.pinned for t in log.transfers)
    where = PLANNED_IN.get(method, 'data_preprocessor.py')
    assert all(t.where.startswith(where) for t in log.transfers), \
        log.report()
    # the images: uint8, batched
    assert log.transfers[0].shape[:2] == (2, 3), log.report()


def test_nan_guard_reads_one_flag_for_all_loss_terms():
    from types import SimpleNamespace

    from mmum.engine.hooks import NaNGuardHook
    outputs = {k: torch.empty((), device='meta')
               for k in ('loss', 'loss_56x56', 'loss_28x28', 'loss_7x7')}
    outputs['acc'] = torch.empty((), device='meta')
    runner = SimpleNamespace(iter=0, epoch=0)
    with count_syncs() as log:
        NaNGuardHook().after_train_iter(runner, 0, outputs=outputs)
    assert [e.kind for e in log.syncs] == ['item'], log.report()
    assert not log.transfers


def um_batch(method='um_mae_swin_t'):
    cfg = tiny_config(method)
    model = build_meta_model(cfg)
    with count_syncs():  # pinning as count_syncs emulates it
        return model, pipeline_batch(cfg)


def test_uniform_mask_is_checked_on_the_host_before_anything_moves():
    model, batch = um_batch()
    bad = batch['data_samples'][1]
    bad.mask = bad.mask.clone()
    bad.mask[:2, :2] = 0  # four visible patches in the first cell
    with count_syncs() as log, pytest.raises(
            ValueError, match=r'sample 1 has 4 in cell \(0, 0\)'):
        model.data_preprocessor(batch, True)
    assert not log.syncs and not log.transfers, log.report()


def test_masks_arrive_as_rows_of_one_device_tensor_per_field():
    model, batch = um_batch()
    before = [sorted(ds.keys()) for ds in batch['data_samples']]
    with count_syncs():
        out = model.data_preprocessor(batch, True)
    # the dataloader's samples keep their host masks
    assert [sorted(ds.keys()) for ds in batch['data_samples']] == before
    assert batch['data_samples'][0].mask.device.type == 'cpu'
    for key in ('mask', 'secondary_mask', 'visible_index'):
        rows = [ds.get(key) for ds in out['data_samples']]
        assert all(r.device.type == 'meta' for r in rows)
        assert rows[0].shape[0] == 16 if key != 'visible_index' else 64
        base = rows[0]._base
        assert base is not None and all(r._base is base for r in rows)


def test_preprocessor_names_masks_of_different_shapes():
    model, batch = um_batch('simmim_swin_t')
    batch['data_samples'][1].mask = batch['data_samples'][1].mask[:-1]
    with pytest.raises(ValueError, match=r"field 'mask' .* got shapes "
                       r'\[\(64, 64\), \(63, 64\)\]'):
        model.data_preprocessor(batch, True)

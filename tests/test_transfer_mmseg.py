"""UperNet on ADE20K (configs/mmseg, UM-MAE appendix B.4) end to end on a
tiny generated ADE20K: the real config shrunk to a tiny encoder, started
from a short UM-MAE pre-training run (PVT-S) or from the intermediate
fine-tuning that followed it (Swin-T: the whole chain), trained a few
iterations through mmseg's Runner with BN instead of SyncBN, evaluated with
mmseg's IoUMetric."""
import math
import os.path as osp

import pytest
from mmengine.config import Config

from transfer_data import (ROOT, SWIN_TINY, PVT_TINY, assert_backbone_from,
                           cache_root, cpu_norms, intermediate, make_ade20k,
                           pretrain, run_cfg, set_loader, shrink_pipeline)

CFG = dict(
    swin='configs/mmseg/upernet_um_mae_swin_t_8xb2-160k_ade20k-512x512.py',
    pvt='configs/mmseg/upernet_um_mae_pvt_s_8xb2-160k_ade20k-512x512.py')
SIZE = 64


def tiny_upernet(arch, checkpoint, data_root):
    cfg = Config.fromfile(osp.join(ROOT, CFG[arch]))
    m = cfg.model
    m.backbone.update(arch=SWIN_TINY if arch == 'swin' else PVT_TINY,
                      img_size=SIZE)
    m.backbone.init_cfg.checkpoint = checkpoint
    dims = [32, 64, 128, 256] if arch == 'swin' else PVT_TINY['embed_dims']
    m.decode_head.update(in_channels=dims, channels=32)
    m.auxiliary_head.update(in_channels=dims[2], channels=16)
    m.data_preprocessor.size = (SIZE, SIZE)
    cpu_norms(cfg)
    for loader in (cfg.train_dataloader, cfg.val_dataloader,
                   cfg.test_dataloader):
        ds = set_loader(loader, data_root)
        shrink_pipeline(ds.pipeline, SIZE)
    return cfg


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return cache_root(tmp_path_factory)


@pytest.mark.parametrize(
    'arch', ['swin', pytest.param('pvt', marks=pytest.mark.slow)])
def test_upernet_trains_and_evaluates(root, arch):
    data = make_ade20k(osp.join(root, 'ade'), num_images=4, size=SIZE)
    if arch == 'swin':  # pre-train -> intermediate -> UperNet
        ckpt, _ = intermediate('swin', root)
    else:  # pre-train -> UperNet ("no intermediate" rows of Table 6)
        ckpt = pretrain('um_mae_pvt', root)
    cfg = tiny_upernet(arch, ckpt, data)
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    runner, metrics = run_cfg(cfg, osp.join(root, f'upernet_{arch}'))
    assert runner.iter == 2
    assert_backbone_from(runner, ckpt)
    print('METRICS', arch, metrics)
    assert {'aAcc', 'mIoU', 'mAcc'} <= set(metrics)
    for v in metrics.values():
        assert math.isfinite(v) and 0 <= v <= 100

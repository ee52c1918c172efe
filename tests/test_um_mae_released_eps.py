"""LayerNorm eps of every UM-MAE layout, norm by norm, as released.

The released UM-MAE Swin / PVT models (implus/UM-MAE) pass their
``norm_layer`` (LayerNorm, eps 1e-6) to the patch embedding, the patch
merging, the final norm and the decoder, but build the encoder blocks without
it, so the blocks' ``norm1`` / ``norm2`` (and PVT's key/value norm, a plain
``nn.LayerNorm``) have PyTorch's default eps 1e-5. Every config that builds
or loads these encoders (pre-training, SimMIM baselines, fine-tuning, mmdet,
mmseg) must use the same eps per norm, or the imported weights compute
another function (up to 1.4e-5 relative at Swin-T's output).
"""
import pytest
import torch
from mmengine.config import Config

from mmum.registry import MODELS

SWIN = ('configs/um_mae/swin_t_200e.py', 'configs/um_mae/swin_l_800e.py',
        'configs/simmim/swin_t_256_200e.py',
        'configs/finetune/um_mae_swin_t_100e.py',
        'configs/finetune/um_mae_swin_l_100e.py',
        'configs/mmdet/gfl_um_mae_swin_t_fpn_lsj-25e_coco.py',
        'configs/mmdet/htcpp_um_mae_swin_l_fpn_ms-36e_coco.py',
        'configs/mmdet/htcpp_um_mae_swin_l_fpn_ms-instaboost-36e_coco.py',
        'configs/mmseg/upernet_um_mae_swin_t_8xb2-160k_ade20k-512x512.py')
PVT = ('configs/um_mae/pvt_s_200e.py', 'configs/simmim/pvt_s_256_200e.py',
       'configs/finetune/um_mae_pvt_s_100e.py',
       'configs/mmdet/gfl_um_mae_pvt_s_fpn_lsj-25e_coco.py',
       'configs/mmseg/upernet_um_mae_pvt_s_8xb2-160k_ade20k-512x512.py')
# norms of the released blocks, built without the model's norm_layer
BLOCK_NORMS = {'swin': ('.norm1', '.norm2'),
               'pvt': ('.norm1', '.norm2', '.attn.norm')}
TINY = {'swin': dict(embed_dims=32, depths=[2, 2, 2, 2],
                     num_heads=[1, 1, 1, 1]),
        'pvt': dict(embed_dims=[8, 8, 8, 8], depths=[2, 2, 2, 2],
                    num_heads=[1, 1, 1, 1], mlp_ratios=[1, 1, 1, 1])}


def expected_eps(name: str, kind: str) -> float:
    """The released eps of the LayerNorm called ``name`` in the backbone."""
    in_block = '.blocks.' in name and name.endswith(BLOCK_NORMS[kind])
    return 1e-5 if in_block else 1e-6


def backbone_cfg(path: str, kind: str):
    cfg = Config.fromfile(path).model.backbone
    cfg.init_cfg = None  # no checkpoint to read
    # a tiny arch: the eps comes from the layout, not the size; the size's
    # own settings (e.g. Swin-L's) stay in the config
    cfg.arch = TINY[kind]
    return cfg


@pytest.mark.parametrize('kind,path', [('swin', p) for p in SWIN] +
                         [('pvt', p) for p in PVT])
def test_backbone_eps_per_norm_as_released(kind, path):
    model = MODELS.build(backbone_cfg(path, kind))
    norms = {n: m for n, m in model.named_modules()
             if isinstance(m, torch.nn.LayerNorm)}
    assert any('.blocks.' in n for n in norms)  # blocks are covered
    for name, m in norms.items():
        assert m.eps == expected_eps(name, kind), (path, name, m.eps)


@pytest.mark.parametrize('kind,path', [
    ('swin', 'configs/um_mae/swin_t_200e.py'),
    ('pvt', 'configs/um_mae/pvt_s_200e.py')])
def test_pretraining_model_eps_at_full_size(kind, path):
    """The whole pre-training model at its real size: blocks 1e-5; patch
    embedding, merging, stage norms and decoder 1e-6."""
    model = MODELS.build(Config.fromfile(path).model)
    seen = set()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm):
            want = expected_eps(name, kind) if name.startswith(
                'backbone.') else 1e-6
            assert m.eps == want, name
            seen.add(want)
    assert seen == {1e-5, 1e-6}

"""Fine-tuning backbones load UM-MAE (and SimMIM) pre-training checkpoints
with a strict key check and run at any size."""
import copy

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmpretrain.structures import DataSample

import mmum  # noqa: F401
from mmum.datasets.transforms import UniformMasking
from mmum.registry import MODELS

SWIN_TINY = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
PVT_TINY = dict(embed_dims=[32, 32, 64, 64], depths=[1, 1, 2, 1],
                num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])


def um_mae_model(arch):
    path = dict(swin='configs/um_mae/swin_t_200e.py',
                pvt='configs/um_mae/pvt_s_200e.py')[arch]
    cfg = copy.deepcopy(Config.fromfile(path).model)
    cfg.backbone.arch = SWIN_TINY if arch == 'swin' else PVT_TINY
    cfg.neck.update(embed_dim=256 if arch == 'swin' else 64,
                    decoder_embed_dim=64, decoder_num_heads=4)
    return MODELS.build(cfg)


def short_pretraining(arch, path, steps=2):
    """A few UM-MAE steps through ``loss``, then save like the Runner."""
    torch.manual_seed(0)
    np.random.seed(0)
    model = um_mae_model(arch)
    model.init_weights()
    t = UniformMasking()
    samples = []
    for _ in range(2):
        mask, secondary = t.sample(16, 16)
        ds = DataSample()
        ds.set_mask(torch.from_numpy(mask))
        ds.set_field(torch.from_numpy(secondary), 'secondary_mask')
        samples.append(ds)
    x = torch.randn(2, 3, 256, 256)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = model.loss(x, samples)['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({'state_dict': model.state_dict()}, path)
    return model


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('ckpt')
    out = {}
    for arch in ('swin', 'pvt'):
        path = str(root / f'um_mae_{arch}.pth')
        out[arch] = (path, short_pretraining(arch, path))
    return out


# the Swin layout of the UM-MAE configs (the released one), as the
# fine-tuning configs repeat it
_FT = Config.fromfile('configs/finetune/um_mae_swin_t_100e.py').model.backbone
RELEASED_SWIN = {k: _FT[k] for k in ('patch_merging', 'cpb_hidden_dims',
                                     'norm_cfg', 'patch_cfg', 'stage_cfgs')}


def finetune_cfg(arch, ckpt, **kwargs):
    """A tiny fine-tuning backbone (a Swin in the configs' layout)."""
    if arch == 'swin':
        cfg = dict(type='mmum.CPBSwinTransformer', arch=SWIN_TINY,
                   **copy.deepcopy(RELEASED_SWIN))
    else:
        cfg = dict(type='mmum.PVT', arch=PVT_TINY)
    cfg.update(kwargs)
    if ckpt is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=ckpt,
                               prefix='backbone.')
    return cfg


def backbone_state(ckpt):
    sd = torch.load(ckpt, map_location='cpu')['state_dict']
    return {k[len('backbone.'):]: v for k, v in sd.items()
            if k.startswith('backbone.')}


SETTINGS = [  # (arch, backbone settings, input sizes)
    ('swin', dict(window_size=16, out_indices=(3, )), (256, )),  # cls
    ('swin', dict(window_size=7, pad_small_map=True,
                  out_indices=(0, 1, 2, 3)), (224, 256, 512)),  # dense
    ('pvt', dict(img_size=224, out_indices=(3, )), (256, )),
    ('pvt', dict(img_size=512, out_indices=(0, 1, 2, 3)), (224, 256, 512)),
]


@pytest.mark.parametrize('arch,kwargs,sizes', SETTINGS)
def test_loads_pretraining_checkpoint_strictly(checkpoints, arch, kwargs,
                                               sizes):
    ckpt, pretrained = checkpoints[arch]
    model = MODELS.build(finetune_cfg(arch, None, **kwargs))
    # strict torch check: only the fine-tuning output norms may be missing,
    # nothing may be unexpected (the mask token is dropped by the model)
    missing, unexpected = model.load_state_dict(
        backbone_state(ckpt), strict=False)
    assert unexpected == []
    assert all(k.startswith(('norm0.', 'norm1.', 'norm2.'))
               for k in missing), missing
    # and through mmengine's Pretrained init, as configs do it
    model = MODELS.build(finetune_cfg(arch, ckpt, **kwargs))
    model.init_weights()
    ours = dict(model.named_parameters())
    for k, v in pretrained.backbone.named_parameters():
        if k != 'mask_token':
            assert torch.equal(ours[k], v), k
    model.eval()
    for size in sizes:
        outs = model(torch.randn(1, 3, size, size))
        strides = [4 * 2**i for i in model.out_indices]
        assert [o.shape[-1] for o in outs] == [
            -(-size // s) for s in strides], (size, kwargs)


@pytest.mark.parametrize('arch', ['swin', 'pvt'])
def test_finetune_equals_pretraining_encoder_without_mask(checkpoints, arch):
    """Same weights, same function: the fine-tuning backbone on an image
    equals the pre-training encoder run without a mask (at the pre-training
    window / the full-size ratios)."""
    ckpt, pretrained = checkpoints[arch]
    kwargs = dict(window_size=8) if arch == 'swin' else dict(img_size=128)
    model = MODELS.build(finetune_cfg(arch, ckpt, **kwargs))
    model.init_weights()
    model.eval()
    pretrained.backbone.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = pretrained.backbone(x, None)[-1]
        assert torch.allclose(model(x)[-1], want, atol=1e-5)


@pytest.mark.parametrize('arch,other', [('swin', 'pvt'), ('pvt', 'swin')])
def test_checkpoint_of_another_architecture_is_refused(checkpoints, arch,
                                                       other):
    ckpt, _ = checkpoints[other]
    model = MODELS.build(finetune_cfg(arch, ckpt))
    with pytest.raises(ValueError, match='another architecture'):
        model.init_weights()


def test_other_size_and_missing_prefix_are_refused(checkpoints, tmp_path):
    ckpt, _ = checkpoints['swin']
    wide = dict(SWIN_TINY, embed_dims=64)
    model = MODELS.build(dict(type='mmum.CPBSwinTransformer', arch=wide,
                              **copy.deepcopy(RELEASED_SWIN)))
    with pytest.raises(ValueError, match=r'shape mismatches.*\(32'):
        model.load_state_dict(backbone_state(ckpt))
    # a whole-algorithm checkpoint loaded without prefix='backbone.'
    model = MODELS.build(dict(type='mmum.PVT', arch=PVT_TINY))
    whole = torch.load(checkpoints['pvt'][0])['state_dict']
    with pytest.raises(ValueError, match="prefix='backbone.'"):
        model.load_state_dict(whole)


@pytest.mark.parametrize('arch', ['swin', 'pvt'])
def test_simmim_checkpoints_load_too(arch, tmp_path):
    path = dict(swin='configs/simmim/swin_t_256_200e.py',
                pvt='configs/simmim/pvt_s_256_200e.py')[arch]
    cfg = copy.deepcopy(Config.fromfile(path).model)
    cfg.backbone.arch = SWIN_TINY if arch == 'swin' else PVT_TINY
    cfg.neck.in_channels = 256 if arch == 'swin' else 64
    simmim = MODELS.build(cfg)
    ckpt = str(tmp_path / 'simmim.pth')
    torch.save({'state_dict': simmim.state_dict()}, ckpt)
    model = MODELS.build(finetune_cfg(arch, ckpt))
    model.init_weights()
    assert torch.isfinite(model(torch.randn(1, 3, 256, 256))[-1]).all()


def test_swin_layer_depth_and_frozen_stages():
    model = MODELS.build(dict(type='mmum.CPBSwinTransformer', arch=SWIN_TINY,
                              frozen_stages=1, out_indices=(0, 1, 2, 3)))
    d = model.get_layer_depth('stages.1.blocks.1.attn.w_msa.cpb.mlp.0.weight')
    assert d == (4, sum(SWIN_TINY['depths']) + 2)
    model.train()
    assert not any(p.requires_grad for p in model.stages[1].parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters())


def test_dense_toolboxes_build_the_backbones():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    pvt = DET.build(dict(type='mmum.PVT', arch=PVT_TINY,
                         out_indices=(0, 1, 2, 3)))
    swin = SEG.build(dict(type='mmum.CPBSwinTransformer', arch=SWIN_TINY,
                          window_size=7, pad_small_map=True,
                          out_indices=(0, 1, 2, 3)))
    x = torch.randn(1, 3, 96, 128)
    assert [o.shape[-2:] for o in pvt(x)] == [(h, w) for h, w in [
        (24, 32), (12, 16), (6, 8), (3, 4)]]
    assert len(swin(x)) == 4


@pytest.mark.slow
def test_swin_l_config_builds():
    cfg = Config.fromfile('configs/um_mae/swin_l_800e.py')
    assert cfg.train_cfg.max_epochs == 800
    assert cfg.param_scheduler[0].end == 40
    assert cfg.train_dataloader.batch_size * \
        cfg.optim_wrapper.accumulative_counts * 8 == 4096
    model = MODELS.build(cfg.model)
    assert model.backbone.embed_dims == 192
    assert len(model.neck.decoder_blocks) == 8
    # released `mae_swin_large_256_dec512d8b64pmd`: 64-wide bias MLP
    assert model.backbone.stages[0].blocks[0].attn.w_msa.cpb.mlp[0] \
        .out_features == 64


def test_simmim_swin_config_builds():
    cfg = Config.fromfile('configs/simmim/swin_t_256_200e.py')
    model = MODELS.build(cfg.model)
    assert model.backbone.stages[0].blocks[0].attn.window_size == 8
    assert hasattr(model.backbone.stages[0].blocks[0].attn.w_msa, 'cpb')
    # the same (released) layout as the UM-MAE Swin-T
    um = MODELS.build(Config.fromfile('configs/um_mae/swin_t_200e.py')
                      .model.backbone)
    shapes = {k: v.shape for k, v in um.state_dict().items()
              if k != 'mask_token'}
    assert {k: v.shape for k, v in model.backbone.state_dict().items()
            if k != 'mask_token'} == shapes
    # as released: 1e-5 in the blocks' norm1 / norm2, 1e-6 elsewhere
    for name, m in model.backbone.named_modules():
        if isinstance(m, torch.nn.LayerNorm):
            block = name.endswith(('.norm1', '.norm2'))
            assert m.eps == (1e-5 if block else 1e-6), name
    gen = [t for t in cfg.train_pipeline if t.type == 'SimMIMMaskGenerator']
    assert gen[0].input_size == 256


@pytest.mark.parametrize('arch', ['swin', 'pvt'])
def test_layer_wise_lr_decay_in_a_classifier(arch):
    """mmpretrain's layer-decay constructor reads ``get_layer_depth``."""
    from mmengine.optim import build_optim_wrapper
    dims = 256 if arch == 'swin' else 64
    model = MODELS.build(dict(
        type='mmpretrain.ImageClassifier',
        backbone=finetune_cfg(arch, None),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=dims)))
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.5)))
    lr = {g['param_name']: g['lr'] for g in wrapper.optimizer.param_groups}
    stem = [v for k, v in lr.items() if 'patch_embed' in k]
    head = [v for k, v in lr.items() if k.startswith('head.')]
    assert max(stem) < min(head) == 1e-3
    n = (sum(SWIN_TINY['depths']) if arch == 'swin' else
         sum(PVT_TINY['depths'])) + 2
    assert min(stem) == pytest.approx(1e-3 * 0.5**(n - 1))

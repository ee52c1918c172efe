"""UM-MAE on PVT: the compact-input equivalence of paper Fig. 2, the
pre-training step, the SimMIM encoder and the configs."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmpretrain.structures import DataSample

import mmum  # noqa: F401
from mmum.datasets.transforms import UniformMasking
from mmum.models.backbones import PVT, UMPVT
from mmum.models.selfsup.um_mae import UMMAE, visible_index
from mmum.registry import MODELS
from _tiny_runs import fit

TINY = dict(embed_dims=[32, 32, 64, 64], depths=[2, 1, 2, 1],
            num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])


def masks(n=2, size=256, seed=0):
    """Uniform masks (B, h, w), 1 = dropped, and secondary masks."""
    np.random.seed(seed)
    t = UniformMasking()
    drawn = [t.sample(size // 16, size // 16) for _ in range(n)]
    mask = torch.from_numpy(np.stack([d[0] for d in drawn]))
    secondary = torch.from_numpy(np.stack([d[1] for d in drawn]))
    return mask, secondary


def units_to_full(compact, index, unit):
    """Place the ``unit`` x ``unit`` token blocks of a compact map
    (B, C, hu*unit, wu*unit) at their full-grid units ``index`` (B, hu*wu);
    the rest of the (B, C, 2*hu*unit, 2*wu*unit) map is zero."""
    B, C, H, W = compact.shape
    hu, wu = H // unit, W // unit
    blocks = compact.view(B, C, hu, unit, wu, unit).permute(
        0, 2, 4, 1, 3, 5).reshape(B, hu * wu, C, unit, unit)
    full = compact.new_zeros(B, 4 * hu * wu, C, unit, unit)
    full.scatter_(1, index.view(B, -1, 1, 1, 1).expand_as(blocks), blocks)
    return full.view(B, 2 * hu, 2 * wu, C, unit, unit).permute(
        0, 3, 1, 4, 2, 5).reshape(B, C, 2 * H, 2 * W)


def full_to_units(full, index, unit):
    """Inverse of :func:`units_to_full`: gather the visible units of a full
    map into the compact layout."""
    B, C, H, W = full.shape
    hf, wf = H // unit, W // unit
    blocks = full.view(B, C, hf, unit, wf, unit).permute(
        0, 2, 4, 1, 3, 5).reshape(B, hf * wf, C, unit, unit)
    blocks = blocks.gather(
        1, index.view(B, -1, 1, 1, 1).expand(-1, -1, C, unit, unit))
    return blocks.view(B, hf // 2, wf // 2, C, unit, unit).permute(
        0, 3, 1, 4, 2, 5).reshape(B, C, H // 2, W // 2)


def sparse_full_size_reference(model, img, mask, secondary, num_stages=3):
    """PVT on the full-size image where dropped patches are blank place
    holders (the upper pipeline of paper Fig. 2), written out by hand.

    Tokens are computed everywhere but only visible ones are kept (others
    zeroed); every spatial-reduction window of the *full-size* ratio
    ({8, 4, 2}) averages only the visible tokens inside it. Returns the
    normalised stage maps (B, C, h, w) at full resolution and the visible
    maps.
    """
    B = img.shape[0]
    index = visible_index(mask)
    emb = model.patch_embed.projection(img)  # B, C, H/4, W/4
    vis = 1. - mask.float()[:, None]  # B, 1, H/16, W/16
    vis = vis.repeat_interleave(4, 2).repeat_interleave(4, 3)
    sec = secondary.float()[:, None].repeat_interleave(4, 2)
    sec = sec.repeat_interleave(4, 3)
    emb = emb * (1 - sec) + model.mask_token.view(1, -1, 1, 1) * sec
    if model.positions == 'original':  # the full-size table, as it is
        pos = model.pos((64, 64)).view(1, 64, 64, -1).permute(0, 3, 1, 2)
    else:  # the compact table's entry of each visible token, at its place
        pos = model.pos_embed.view(1, 32, 32, -1).permute(0, 3, 1, 2)
        pos = units_to_full(pos.expand(B, -1, -1, -1), index, 4)
    x = (emb + pos) * vis

    outs, unit = [], 4
    for s, stage in enumerate(model.stages[:num_stages]):
        if stage.downsample is not None:
            x = stage.downsample.projection(x)  # 2x2 conv inside units
            vis, unit = vis[:, :, ::2, ::2], unit // 2
        r = model.sr_ratios[s]
        _, C, H, W = x.shape
        for blk in stage.blocks:
            t = x.flatten(2).transpose(1, 2)  # B, N, C
            n1 = blk.norm1(t)
            n1_map = n1.transpose(1, 2).reshape(B, C, H, W)
            # each r x r window: mean of its visible tokens only
            pooled = F.avg_pool2d(n1_map * vis, r) / F.avg_pool2d(vis, r)
            a = blk.attn
            kv = a.kv(a.norm(a.sr(pooled).flatten(2).transpose(1, 2)))
            k, v = kv.chunk(2, dim=-1)
            heads = a.num_heads
            q = a.q(n1).view(B, -1, heads, C // heads).transpose(1, 2)
            k = k.reshape(B, -1, heads, C // heads).transpose(1, 2)
            v = v.reshape(B, -1, heads, C // heads).transpose(1, 2)
            att = (q @ k.transpose(-1, -2) * (C // heads)**-.5).softmax(-1)
            t = t + a.proj((att @ v).transpose(1, 2).reshape(B, -1, C))
            t = t + blk.mlp(blk.norm2(t))
            x = t.transpose(1, 2).reshape(B, C, H, W) * vis
        out = getattr(model, f'norm{s}')(x.flatten(2).transpose(1, 2))
        outs.append((out.transpose(1, 2).reshape(B, C, H, W) * vis, unit))
    return outs, index


def test_compact_pools_are_halved():
    model = UMPVT(arch=TINY, img_size=128)
    assert model.compact_pools == (4, 2, 1, 1)
    assert model.sr_ratios == (8, 4, 2, 1)


@pytest.mark.parametrize('positions', ['original', 'compact'])
def test_fig2_equivalence_compact_equals_sparse_full_size(positions):
    """Paper Fig. 2: the compact input with halved reduction windows gives,
    token for token, the full-size sparse pipeline's stages 1-3 (the last
    2x2 merge joins units of four cells and has no full-size counterpart);
    with ``positions='original'`` that pipeline adds the full-size sin-cos
    table, ``'compact'`` its compact table's entry at each visible patch."""
    torch.manual_seed(0)
    model = UMPVT(arch=TINY, img_size=128, out_indices=(0, 1, 2, 3),
                  positions=positions)
    model.init_weights()
    model.eval()
    img = torch.randn(2, 3, 256, 256)
    mask, secondary = masks(2)
    index = visible_index(mask)
    compact = UMMAE.compact(SimpleNamespace(patch_size=16), img, index)
    sec_units = secondary.flatten(1).gather(1, index).view(2, 8, 8)
    with torch.no_grad():
        outs = model(compact, sec_units, index)
        ref, _ = sparse_full_size_reference(model, img, mask, secondary)
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4]
    for s, (full, unit) in enumerate(ref):
        got = full_to_units(full, index, unit)
        err = (got - outs[s]).abs().max().item()
        assert err <= 1e-5, f'stage {s + 1}: max abs diff {err}'
    # sanity: with the full-size ratios on the compact input it differs
    model.sr_ratios = (16, 8, 4, 2)  # compact pools 8, 4, 2, 1
    with torch.no_grad():
        wrong = model(compact, sec_units, index)
    assert (wrong[0] - outs[0]).abs().max() > 1e-3


def test_secondary_mask_token_and_position_reach_the_encoder():
    torch.manual_seed(0)
    model = UMPVT(arch=TINY, img_size=128)
    model.init_weights()
    seen = []
    model.stages[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0]))
    mask = torch.zeros(1, 8, 8)
    mask[0, 2, 3] = 1
    uniform = torch.ones(1, 16, 16)
    uniform[:, 1::2, ::2] = 0  # every cell keeps its bottom-left patch
    model(torch.randn(1, 3, 128, 128), mask, visible_index(uniform))
    tok = seen[0][0].view(32, 32, -1)[8:12, 12:16]  # compact unit (2, 3)
    # = original unit (5, 6): the full-size table there
    want = model.mask_token.view(-1) + model.pos_embed.view(64, 64, -1)[
        20:24, 24:28]
    assert torch.allclose(tok, want, atol=1e-6)


@pytest.mark.slow
def test_pretraining_step_decreases_loss():
    cfg = copy.deepcopy(Config.fromfile('configs/um_mae/pvt_s_200e.py').model)
    cfg.backbone.arch = TINY
    cfg.neck.update(embed_dim=64, decoder_embed_dim=64, decoder_num_heads=4)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    mask, secondary = masks(2)
    # smooth images: their normalised patches are predictable (white noise
    # leaves a loss floor of 1, which the released initialisation starts at)
    x = F.interpolate(torch.randn(2, 3, 8, 8), size=256, mode='bilinear')
    samples = []
    for m, s in zip(mask, secondary):
        ds = DataSample()
        ds.set_mask(m)
        ds.set_field(s, 'secondary_mask')
        samples.append(ds)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = fit(opt, lambda: model.loss(x, samples)['loss'], 30)
    assert losses[-1] < 0.8 * losses[0], losses
    assert model.backbone.mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize('size', [224, 256, 512, 200])
def test_finetune_pvt_any_size(size):
    model = PVT(arch=TINY, img_size=128, out_indices=(0, 1, 2, 3))
    outs = model(torch.randn(1, 3, size, size))
    side = -(-size // 32) * 8  # padded to a multiple of 32
    assert [o.shape[-1] for o in outs] == [side, side // 2, side // 4,
                                           side // 8]
    assert [o.shape[1] for o in outs] == TINY['embed_dims']


def test_bad_inputs_name_the_problem():
    model = UMPVT(arch=TINY, img_size=128)
    with pytest.raises(ValueError, match=r'112x112.*multiple of 64 px'):
        model(torch.randn(1, 3, 112, 112), torch.zeros(1, 7, 7))
    with pytest.raises(ValueError, match=r'expected \(B, 8, 8\)'):
        model(torch.randn(1, 3, 128, 128), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r'stage-1 reduction window \(6 '
                       r'tokens = 24 px\) must cover whole 2x2 cells'):
        UMPVT(arch=TINY, sr_ratios=(6, 4, 2, 1))(
            torch.randn(1, 3, 128, 128), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="PVT arch 'huge'"):
        PVT(arch='huge')
    with pytest.raises(ValueError, match='custom PVT arch'):
        PVT(arch=dict(embed_dims=[8] * 4))
    with pytest.raises(ValueError, match='out_indices'):
        PVT(arch=TINY, out_indices=(4, ))


def test_layer_depth_and_frozen_stages():
    model = PVT(arch=TINY, out_indices=(0, 3), frozen_stages=1)
    n = sum(TINY['depths']) + 2
    depth = {k: model.get_layer_depth(k)[0]
             for k, _ in model.named_parameters()}
    assert depth['patch_embed.projection.weight'] == 0
    assert depth['stages.0.blocks.0.attn.q.weight'] == 1
    assert depth['stages.1.downsample.projection.weight'] == 3
    assert depth['stages.3.blocks.0.mlp.0.weight'] == n - 2
    assert depth['norm3.weight'] == n - 1
    assert model.get_layer_depth('head.fc.weight', 'backbone.')[0] == n - 1
    model.train()
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert 'stages.1.blocks.0.attn.q.weight' in frozen
    assert 'norm0.weight' in frozen and 'norm3.weight' not in frozen
    assert 'stages.2.blocks.0.attn.q.weight' not in frozen
    assert not model.stages[0].training and model.stages[2].training


def test_simmim_pvt_masks_the_full_resolution_input():
    cfg = copy.deepcopy(
        Config.fromfile('configs/simmim/pvt_s_256_200e.py').model)
    cfg.backbone.arch = TINY
    cfg.neck.in_channels = 64
    model = MODELS.build(cfg)
    model.init_weights()
    seen = []
    model.backbone.stages[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[1]))
    mask = (torch.rand(2, 64, 64) > 0.5).float()
    ds = []
    for m in mask:
        d = DataSample()
        d.set_mask(m)
        ds.append(d)
    loss = model.loss(torch.randn(2, 3, 256, 256), ds)['loss']
    assert torch.isfinite(loss)
    assert tuple(seen[0]) == (64, 64)  # the whole image, stride 4


@pytest.mark.parametrize('path', ['configs/um_mae/pvt_s_200e.py',
                                  'configs/simmim/pvt_s_256_200e.py'])
def test_real_configs_build(path):
    model = MODELS.build(Config.fromfile(path).model)
    n = sum(p.numel() for p in model.backbone.parameters())
    # PVTv1-S has 24.5M with its classifier; the pooling + 1x1 reduction
    # instead of strided sr x sr convs leaves ~20.8M in the backbone
    assert 20.5e6 < n < 21e6, n


TINY_OVERRIDES = {
    'configs/um_mae/pvt_s_200e.py': dict(
        backbone=dict(arch=TINY),
        neck=dict(embed_dim=64, decoder_embed_dim=64, decoder_num_heads=4)),
    'configs/um_mae/swin_l_800e.py': dict(
        backbone=dict(arch=dict(embed_dims=32, depths=[2, 2, 2, 2],
                                num_heads=[2, 2, 4, 4])),
        neck=dict(embed_dim=256, decoder_embed_dim=64, decoder_num_heads=4,
                  decoder_depth=1)),
    'configs/um_mae/vit_b_200e.py': dict(
        backbone=dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                feedforward_channels=64)),
        neck=dict(embed_dim=32, decoder_embed_dim=32, decoder_num_heads=2,
                  decoder_depth=1)),
    'configs/simmim/swin_t_256_200e.py': dict(
        backbone=dict(arch=dict(embed_dims=32, depths=[2, 2, 2, 2],
                                num_heads=[2, 2, 4, 4])),
        neck=dict(in_channels=256)),
    'configs/simmim/pvt_s_256_200e.py': dict(
        backbone=dict(arch=TINY), neck=dict(in_channels=64)),
}


@pytest.mark.slow
@pytest.mark.parametrize('path', sorted(TINY_OVERRIDES))
def test_runner_trains_config(tmp_path, path):
    """Each added config trains 2 iterations through mmengine's Runner
    (pipeline, collate, optimizer settings, schedulers, checkpoint) with a
    tiny model on generated images."""
    import cv2
    from mmengine.runner import Runner
    img_dir = tmp_path / 'imgs'
    img_dir.mkdir()
    rng = np.random.RandomState(0)
    for i in range(4):
        cv2.imwrite(str(img_dir / f'{i}.png'),
                    rng.randint(0, 255, (300, 280, 3)).astype(np.uint8))
    cfg = Config.fromfile(path)
    for part, values in TINY_OVERRIDES[path].items():
        cfg.model[part].update(values)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.resume = False
    cfg.train_dataloader.update(batch_size=2, num_workers=0,
                                persistent_workers=False)
    cfg.train_dataloader.dataset = dict(
        type='CustomDataset', data_root=str(img_dir), with_label=False,
        pipeline=cfg.train_dataloader.dataset.pipeline)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2)
    for s in cfg.param_scheduler:
        s.update(by_epoch=False, begin=0, end=2)
        s.pop('convert_to_iter_based', None)
        s.pop('T_max', None)
    cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs a GPU
    cfg.optim_wrapper.pop('loss_scale', None)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                        interval=2)
    cfg.randomness = dict(seed=0)
    Runner.from_cfg(cfg).train()
    assert (tmp_path / 'work' / 'iter_2.pth').exists()

"""GreenMIM as released: importer, patch-merging order, decoder position
table, LayerNorm eps and initialisation in the configs (issue 14).

The released-layout state dicts are built here from the key layout of the
released GreenMIM Swin (``encoder.layers.{s}.blocks.{b}...``, position-major
patch merging, MAE decoder); the references are written from that
description, not from the released code.
"""
import importlib.util
import math
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmpretrain.models import SwinTransformer

import mmum  # noqa: F401
from mmum.models.backbones.green_swin import GreenSwinTransformer
from mmum.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    'green_mim_official_to_mmum',
    osp.join(ROOT, 'tools', 'model_converters',
             'green_mim_official_to_mmum.py'))
conv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conv)

TINY = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])
DEC = 32  # decoder width


pytestmark = pytest.mark.usefixtures('one_thread')


def released_state_dict(arch=TINY, window=7, img=224, unit=32, seed=0,
                        decoder=True):
    """Random weights in the released GreenMIM Swin layout. A stage whose
    map is not larger than the window uses a window of the map's size (its
    bias table shrinks), as in the released Swin."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    sd = {}
    C = arch['embed_dims']
    sd['encoder.patch_embed.proj.weight'] = r(C, 3, 4, 4)
    sd['encoder.patch_embed.proj.bias'] = r(C)
    sd['encoder.patch_embed.norm.weight'] = 1 + r(C)
    sd['encoder.patch_embed.norm.bias'] = r(C)
    side = img // 4
    for s, (depth, nh) in enumerate(zip(arch['depths'], arch['num_heads'])):
        w = min(window, side)
        for b in range(depth):
            p = f'encoder.layers.{s}.blocks.{b}.'
            sd[p + 'norm1.weight'], sd[p + 'norm1.bias'] = 1 + r(C), r(C)
            sd[p + 'attn.relative_position_bias_table'] = r(
                (2 * w - 1)**2, nh)
            sd[p + 'attn.relative_position_index'] = conv.rel_index(w)
            sd[p + 'attn.qkv.weight'], sd[p + 'attn.qkv.bias'] = r(
                3 * C, C), r(3 * C)
            sd[p + 'attn.proj.weight'] = r(C, C)
            sd[p + 'attn.proj.bias'] = r(C)
            sd[p + 'norm2.weight'], sd[p + 'norm2.bias'] = 1 + r(C), r(C)
            sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias'] = r(
                4 * C, C), r(4 * C)
            sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'] = r(
                C, 4 * C), r(C)
        if s < len(arch['depths']) - 1:
            p = f'encoder.layers.{s}.downsample.'
            sd[p + 'reduction.weight'] = r(2 * C, 4 * C)
            sd[p + 'norm.weight'], sd[p + 'norm.bias'] = 1 + r(4 * C), r(4 * C)
            C, side = 2 * C, side // 2
    sd['encoder.norm.weight'], sd['encoder.norm.bias'] = 1 + r(C), r(C)
    if decoder:
        L = (img // unit)**2
        sd['mask_token'] = r(1, 1, DEC)
        sd['decoder_pos_embed'] = r(1, L, DEC)
        sd['decoder_embed.weight'], sd['decoder_embed.bias'] = r(DEC, C), r(
            DEC)
        p = 'decoder_blocks.0.'
        sd[p + 'norm1.weight'], sd[p + 'norm1.bias'] = 1 + r(DEC), r(DEC)
        sd[p + 'attn.qkv.weight'], sd[p + 'attn.qkv.bias'] = r(
            3 * DEC, DEC), r(3 * DEC)
        sd[p + 'attn.proj.weight'], sd[p + 'attn.proj.bias'] = r(
            DEC, DEC), r(DEC)
        sd[p + 'norm2.weight'], sd[p + 'norm2.bias'] = 1 + r(DEC), r(DEC)
        sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias'] = r(
            4 * DEC, DEC), r(4 * DEC)
        sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'] = r(
            DEC, 4 * DEC), r(DEC)
        sd['decoder_norm.weight'], sd['decoder_norm.bias'] = 1 + r(DEC), r(
            DEC)
        sd['decoder_pred.weight'] = r(unit * unit * 3, DEC)
        sd['decoder_pred.bias'] = r(unit * unit * 3)
    return sd


def _layer_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.LayerNorm)]


@pytest.mark.parametrize('window', [7, 14])
def test_backbone_only_loads_strictly_into_mmpretrain_swin(window):
    sd = released_state_dict(window=window)
    out, settings = conv.official_to_swin(sd)
    swin = MODELS.build(settings)
    swin.load_state_dict(out, strict=True)
    # each stage keeps the window the released model used there
    assert [st.blocks[0].attn.w_msa.window_size[0] for st in swin.stages] == (
        [7, 7, 7, 7] if window == 7 else [14, 14, 14, 7])
    assert {m.eps for m in _layer_norms(swin)} == {1e-6}
    # an extracted backbone (no encoder. prefix, no decoder) converts too
    bare = {k[len('encoder.'):]: v for k, v in sd.items()
            if k.startswith('encoder.')}
    out2, _ = conv.official_to_swin(bare)
    assert out2.keys() == out.keys()


@pytest.mark.parametrize('window', [7, 14])
def test_full_checkpoint_loads_strictly_into_green_mim(window):
    sd = released_state_dict(window=window)
    out, settings = conv.official_to_mmum(sd)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'green_mim',
                                   'swin_b_800e.py')).model
    cfg.backbone.update(settings['backbone'])
    cfg.neck.update(settings['neck'])
    cfg.head.update(settings['head'])
    cfg.mask_unit = settings['mask_unit']
    model = MODELS.build(cfg)
    model.load_state_dict(out, strict=True)
    assert {m.eps for m in _layer_norms(model.backbone)} == {1e-6}
    assert {m.eps for m in _layer_norms(model.neck)} == {1e-6}
    # decoder table: the released (column-first) table, a zero row in front
    torch.testing.assert_close(model.neck.decoder_pos_embed[0, 1:],
                               sd['decoder_pos_embed'][0], rtol=0, atol=0)
    if window == 14:  # stage 4 ran 7x7 windows: its 13x13 table is centred
        table = model.backbone.stages[3].blocks[0].attn.w_msa\
            .relative_position_bias_table.view(27, 27, -1)
        ref = sd['encoder.layers.3.blocks.0.attn.relative_position_bias_table']
        torch.testing.assert_close(table[7:20, 7:20], ref.view(13, 13, -1),
                                   rtol=0, atol=0)
        assert table[:7].abs().sum() == 0 and table[20:].abs().sum() == 0
    # the converted model runs on a random mask
    torch.manual_seed(0)
    loss = model.loss(torch.randn(1, 3, 224, 224), [None])['loss']
    assert torch.isfinite(loss)


def _released_merge(x, norm_w, norm_b, red_w, eps=1e-6):
    """Reference from the released description: each 2x2 cell of the
    (B, H, W, C) map concatenated position-major as Swin's x0..x3 =
    (0,0), (1,0), (0,1), (1,1), then LayerNorm(4C) and the linear."""
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                     x[:, 1::2, 1::2]], -1)  # B, H/2, W/2, 4C
    cat = F.layer_norm(cat, cat.shape[-1:], norm_w, norm_b, eps)
    return cat @ red_w.t()


def test_patch_merging_gives_the_released_concatenation_order():
    sd = released_state_dict()
    out, settings = conv.official_to_swin(sd)
    swin = MODELS.build(settings)
    swin.load_state_dict(out, strict=True)
    C, H, W = 16, 8, 8
    # a known input: channel c of token (i, j) is 100 i + 10 j + c / 16
    i, j, c = torch.meshgrid(torch.arange(H), torch.arange(W),
                             torch.arange(C), indexing='ij')
    x = (100. * i + 10. * j + c / 16.)[None]  # 1, H, W, C
    p = 'encoder.layers.0.downsample.'
    ref = _released_merge(x, sd[p + 'norm.weight'], sd[p + 'norm.bias'],
                          sd[p + 'reduction.weight'])  # 1, H/2, W/2, 2C
    # mmpretrain's (mmcv, nn.Unfold) PatchMerging with converted weights
    ds = swin.stages[0].downsample
    got, hw = ds(x.reshape(1, H * W, C), (H, W))
    assert hw == (H // 2, W // 2)
    torch.testing.assert_close(got, ref.reshape(1, -1, 2 * C))
    # mmum's sparse merge of some visible cells, same weights
    keep = torch.zeros(H // 2, W // 2, dtype=torch.bool)
    keep[0, 1] = keep[2, 0] = keep[3, 3] = True
    fine = keep.repeat_interleave(2, 0).repeat_interleave(2, 1)
    coords = fine.nonzero()
    tokens = x[0][fine][None]  # 1, N, C, row-major
    got, new_coords, _ = GreenSwinTransformer._merge(ds, tokens, coords,
                                                     (H, W))
    torch.testing.assert_close(new_coords, keep.nonzero())
    torch.testing.assert_close(got[0], ref[0][keep])
    # without the column permutation the released weights would not match
    assert not torch.allclose(
        _released_merge(x, out['stages.0.downsample.norm.weight'],
                        out['stages.0.downsample.norm.bias'],
                        out['stages.0.downsample.reduction.weight']), ref)


def test_decoder_position_table_is_column_first():
    """Unit (r, c) gets [sin(c w), cos(c w), sin(r w), cos(r w)] with the
    D/4 frequencies w_k = 10000^(-k / (D/4)) (MAE's / the released table;
    mmpretrain's builder gives the row/column transpose)."""
    dec = MODELS.build(dict(type='mmum.GreenMIMDecoder', num_patches=16,
                            patch_size=32, embed_dim=64,
                            decoder_embed_dim=32, decoder_depth=1,
                            decoder_num_heads=2))
    dec.init_weights()
    D, side = 32, 4
    w = 1. / 10000**(torch.arange(D // 4, dtype=torch.float64) / (D // 4))
    for r in range(side):
        for c in range(side):
            ref = torch.cat([torch.sin(c * w), torch.cos(c * w),
                             torch.sin(r * w), torch.cos(r * w)]).float()
            torch.testing.assert_close(
                dec.decoder_pos_embed[0, 1 + r * side + c], ref, atol=1e-6,
                rtol=0)


def test_refuses_other_architectures():
    um_mae = {'blocks.0.attn.posmlp.0.weight': torch.zeros(1),
              'patch_embed.proj.weight': torch.zeros(1)}
    for f in (conv.official_to_swin, conv.official_to_mmum):
        with pytest.raises(ValueError, match=r'encoder\.patch_embed\.proj'
                           r'.*blocks\.0'):
            f(um_mae)
    sd = released_state_dict()
    sd['encoder.layers.0.blocks.0.attn.posmlp.0.weight'] = torch.zeros(1)
    for f in (conv.official_to_swin, conv.official_to_mmum):
        with pytest.raises(ValueError, match='posmlp'):
            f(sd)
    bare = released_state_dict(decoder=False)
    bare = {k[len('encoder.'):]: v for k, v in bare.items()}
    # issue 26: an encoder-only file gives the backbone (tests in
    # test_users_checkpoints.py)
    out, settings = conv.official_to_mmum(bare)
    assert 'neck' not in settings and all(
        k.startswith('backbone.') for k in out)


def _config(*parts):
    return Config.fromfile(osp.join(ROOT, 'configs', *parts))


@pytest.mark.parametrize('parts', [
    ('green_mim', 'swin_b_800e.py'), ('green_mim', 'swin_l_800e.py')])
def test_pretraining_configs_use_released_eps_and_init(parts):
    cfg = _config(*parts).model
    cfg.backbone.update(arch=TINY)  # the settings, on a small Swin
    cfg.neck.update(embed_dim=TINY['embed_dims'] * 8, decoder_embed_dim=DEC,
                    decoder_num_heads=2)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    assert {m.eps for m in _layer_norms(model)} == {1e-6}
    for m in _layer_norms(model):
        assert (m.weight == 1).all() and (m.bias == 0).all()
    for name, m in model.named_modules():  # Xavier-uniform, bias 0
        if isinstance(m, nn.Linear):
            out_f, in_f = m.weight.shape
            bound = math.sqrt(6 / (in_f + out_f))
            assert m.weight.abs().max() <= bound, name
            assert m.weight.std() > 0.9 * bound / math.sqrt(3), name
            assert m.bias is None or (m.bias == 0).all(), name
    # patch embedding as a linear map: fan_out = out channels (not out*k*k)
    w = model.backbone.patch_embed.projection.weight  # C, 3, 4, 4
    bound = math.sqrt(6 / (w[0].numel() + w.shape[0]))
    assert w.abs().max() <= bound
    assert w.std() > 0.9 * bound / math.sqrt(3)
    assert w.abs().max() > math.sqrt(6 / (w[0].numel() + w[:, 0].numel()))


@pytest.mark.parametrize('parts', [
    ('finetune', 'green_mim_swin_b_100e.py'),
    ('finetune', 'green_mim_swin_l_100e.py'),
    ('mmdet', 'mask-rcnn_green_mim_swin_b_fpn_1x_coco.py'),
    ('mmdet', 'mask-rcnn_green_mim_swin_b_fpn_ms-crop-3x_coco.py')])
def test_transfer_configs_use_the_pretraining_eps(parts):
    bb = _config(*parts).model.backbone
    bb.update(arch=TINY, init_cfg=None)
    swin = MODELS.build(bb)
    assert isinstance(swin, SwinTransformer)
    assert {m.eps for m in _layer_norms(swin)} == {1e-6}


def test_group_attention_keeps_only_q_k_v_and_the_weights_for_backward():
    """Autograd's saved tensors of one GroupWindowAttention (each storage
    once, parameters excluded): the block's input, q, k, v (padded groups),
    the softmax weights and the pre-projection output, plus small index
    tensors, and no joint qkv storage (which kept 2 x C more per padded
    token than the released attention)."""
    from mmum.models.layers.group_window_attention import (
        GroupWindowAttention, build_group_plan)
    torch.manual_seed(0)
    C, nh, ws, B = 32, 2, 7, 2
    attn = GroupWindowAttention(C, (ws, ws), nh)
    keep = torch.rand(28, 28) < 0.4
    coords = keep.nonzero()
    plan = build_group_plan(coords, ws, 0, C)
    N, S = len(coords), plan.index.numel()
    x = torch.randn(B, N, C, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in attn.parameters()}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x, plan=plan).sum().backward()
    G, gs = S // plan.group_size, plan.group_size
    f = 4  # float32 bytes
    big = (2 * B * N * C + 3 * B * S * C + B * nh * G * gs * gs) * f
    small = S * 8 + N * 8 + G * gs * gs * (8 + 1) * 2  # indices and masks
    assert max(saved.values()) < 3 * B * S * C * f  # no joint qkv
    assert sum(saved.values()) <= big + small
    assert sum(saved.values()) > big * 0.9


def test_command_line_prints_what_it_converted(tmp_path, monkeypatch,
                                               capsys):
    src = str(tmp_path / 'released.pth')
    torch.save({'model': released_state_dict(window=14), 'epoch': 3}, src)
    for extra, target in [([], 'mmum GreenMIM'),
                          (['--backbone-only'], 'mmpretrain SwinTransformer')]:
        dst = str(tmp_path / 'out.pth')
        monkeypatch.setattr('sys.argv', ['x', src, dst] + extra)
        conv.main()
        text = capsys.readouterr().out
        assert target in text and 'patch mergings' in text
        assert "'eps': 1e-06" in text
        state = torch.load(dst)['state_dict']
        assert 'stages.0.downsample.reduction.weight' in ''.join(state)
    assert 'windows per stage [14, 14, 14, 7]' in text
    torch.save({'model': {'blocks.0.attn.posmlp.0.weight': torch.zeros(1)}},
               src)
    monkeypatch.setattr('sys.argv', ['x', src, dst])
    with pytest.raises(ValueError, match='not a released GreenMIM'):
        conv.main()

"""Checkpoint tools: backbone extraction, the official UM-MAE importer and
the reconstruction visualiser."""
import copy
import importlib.util
import math
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

import mmum  # noqa: F401
from mmum.registry import MODELS


def load_tool(path):
    spec = importlib.util.spec_from_file_location(path.replace('/', '_'),
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract = load_tool('tools/model_converters/extract_backbone.py')
official = load_tool('tools/model_converters/um_mae_official_to_mmum.py')
visualize = load_tool('tools/analysis_tools/visualize_reconstruction.py')

SWIN = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
PVT = dict(embed_dims=[32, 32, 64, 64], depths=[1, 1, 2, 1],
           num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
DEC = dict(decoder_embed_dim=64, decoder_num_heads=4, decoder_depth=2)


def um_mae_cfg(arch):
    """The default config's model (the released layout) at a tiny size."""
    path = dict(swin='configs/um_mae/swin_t_200e.py',
                pvt='configs/um_mae/pvt_s_200e.py')[arch]
    cfg = copy.deepcopy(Config.fromfile(path).model)
    cfg.backbone.arch = SWIN if arch == 'swin' else PVT
    cfg.neck.update(embed_dim=256 if arch == 'swin' else 64, **DEC)
    return cfg


# -- extract_backbone --------------------------------------------------------
def test_extract_backbone_loads_strictly(tmp_path, monkeypatch):
    model = MODELS.build(um_mae_cfg('pvt'))
    src, dst = str(tmp_path / 'pre.pth'), str(tmp_path / 'bb.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 3}}, src)
    monkeypatch.setattr(sys, 'argv', ['x', src, dst])
    extract.main()
    out = torch.load(dst)
    assert 'mask_token' not in out['state_dict']
    assert out['meta']['epoch'] == 3
    ft = MODELS.build(dict(type='mmum.PVT', arch=PVT, img_size=128))
    ft.load_state_dict(out['state_dict'], strict=True)
    kept = extract.extract_backbone(torch.load(src), keep_mask_token=True)
    assert 'mask_token' in kept
    # and a fine-tuning backbone loads the small file without a prefix
    ft = MODELS.build(dict(type='mmum.PVT', arch=PVT, init_cfg=dict(
        type='Pretrained', checkpoint=dst)))
    ft.init_weights()
    assert torch.equal(ft.norm3.weight, model.backbone.norm3.weight)


def test_extract_backbone_refuses_other_checkpoints():
    with pytest.raises(ValueError, match="no 'backbone.' keys.*'blocks'"):
        extract.extract_backbone({'model': 1, 'blocks.0.w': 1})
    with pytest.raises(ValueError, match='not a checkpoint'):
        extract.extract_backbone([1, 2])


# -- official importer ---------------------------------------------------------
def _r(*shape):
    return torch.randn(*shape) * 0.1


def _ln(sd, name, dim):
    sd[f'{name}.weight'] = 1 + _r(dim)
    sd[f'{name}.bias'] = _r(dim)


def _linear(sd, name, i, o, bias=True):
    sd[f'{name}.weight'] = _r(o, i)
    if bias:
        sd[f'{name}.bias'] = _r(o)


def official_decoder(sd, enc_dim, D=64, depth=2, L=256, p=16):
    _linear(sd, 'decoder_embed', enc_dim, 4 * D)
    sd['mask_token'] = _r(1, 1, D)
    sd['decoder_pos_embed'] = _r(1, L, D)
    for i in range(depth):
        b = f'decoder_blocks.{i}'
        _ln(sd, f'{b}.norm1', D)
        _linear(sd, f'{b}.attn.qkv', D, 3 * D)
        _linear(sd, f'{b}.attn.proj', D, D)
        _ln(sd, f'{b}.norm2', D)
        _linear(sd, f'{b}.mlp.fc1', D, 4 * D)
        _linear(sd, f'{b}.mlp.fc2', 4 * D, D)
    _ln(sd, 'decoder_norm', D)
    _linear(sd, 'decoder_pred', D, p * p * 3)


def official_swin_state(C=32, depths=(2, 2, 2, 2), heads=(2, 2, 4, 4),
                        hidden=32, **dec):
    """Random tensors in the official ``MaskedAutoencoderSwin`` layout
    (``dec``: arguments of :func:`official_decoder`)."""
    torch.manual_seed(0)
    sd = {'vis_mask_token': _r(1, 1, C),
          'patch_embed.proj.weight': _r(C, 3, 4, 4),
          'patch_embed.proj.bias': _r(C)}
    _ln(sd, 'patch_embed.norm', C)
    k = 0
    for s, (depth, h) in enumerate(zip(depths, heads)):
        d = C * 2**s
        for j in range(depth):
            b = f'blocks.{k}'
            if s > 0 and j == 0:
                _ln(sd, f'{b}.downsample.norm', d // 2)
                sd[f'{b}.downsample.proj.weight'] = _r(d, d // 2, 2, 2)
                sd[f'{b}.downsample.proj.bias'] = _r(d)
            _ln(sd, f'{b}.norm1', d)
            sd[f'{b}.attn.posmlp.0.weight'] = _r(hidden, 2, 1, 1) * 10
            sd[f'{b}.attn.posmlp.0.bias'] = _r(hidden)
            sd[f'{b}.attn.posmlp.2.weight'] = _r(h, hidden, 1, 1) * 10
            sd[f'{b}.attn.posmlp.2.bias'] = _r(h) * 10
            _linear(sd, f'{b}.attn.qkv', d, 3 * d)
            _linear(sd, f'{b}.attn.proj', d, d)
            _ln(sd, f'{b}.norm2', d)
            _linear(sd, f'{b}.mlp.fc1', d, 4 * d)
            _linear(sd, f'{b}.mlp.fc2', 4 * d, d)
            k += 1
    _ln(sd, 'norm', C * 8)
    official_decoder(sd, C * 8, **dec)
    return sd


def official_pvt_state(p=PVT, img=256, **dec):
    """Random tensors in the official ``MaskedAutoencoderPVT`` layout."""
    torch.manual_seed(0)
    dims = p['embed_dims']
    sd = {'vis_mask_token': _r(1, 1, dims[0]),
          'pos_embed': _r(1, (img // 4)**2, dims[0]),
          'patch_embed.proj.weight': _r(dims[0], 3, 4, 4),
          'patch_embed.proj.bias': _r(dims[0])}
    k = 0
    for s, depth in enumerate(p['depths']):
        d, hid = dims[s], int(dims[s] * p['mlp_ratios'][s])
        for j in range(depth):
            b = f'blocks.{k}'
            if s > 0 and j == 0:
                sd[f'{b}.downsample.proj.weight'] = _r(d, dims[s - 1], 2, 2)
                sd[f'{b}.downsample.proj.bias'] = _r(d)
            _ln(sd, f'{b}.norm1', d)
            _linear(sd, f'{b}.attn.q', d, d)
            _linear(sd, f'{b}.attn.kv', d, 2 * d)
            _linear(sd, f'{b}.attn.proj', d, d)
            sd[f'{b}.attn.sr.weight'] = _r(d, d, 1, 1)
            sd[f'{b}.attn.sr.bias'] = _r(d)
            _ln(sd, f'{b}.attn.norm', d)
            _ln(sd, f'{b}.norm2', d)
            _linear(sd, f'{b}.mlp.fc1', d, hid)
            _linear(sd, f'{b}.mlp.fc2', hid, d)
            k += 1
    _ln(sd, 'norm', dims[-1])
    official_decoder(sd, dims[-1], **dec)
    return sd


def official_pvt_forward(sd, x, p=PVT, sr=(8, 4, 2, 1)):
    """The official PVT's fine-tuning forward, written from its layout."""
    ln = lambda t, n, eps=1e-6: F.layer_norm(  # noqa: E731
        t, t.shape[-1:], sd[f'{n}.weight'], sd[f'{n}.bias'], eps)
    lin = lambda t, n: F.linear(t, sd[f'{n}.weight'], sd[f'{n}.bias'])  # noqa
    x = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'],
                 stride=4)
    B, C, H, W = x.shape
    x = x.flatten(2).transpose(1, 2) + sd['pos_embed']
    k = 0
    for s, depth in enumerate(p['depths']):
        for j in range(depth):
            b = f'blocks.{k}'
            if s > 0 and j == 0:
                x = F.conv2d(x.transpose(1, 2).reshape(B, -1, H, W),
                             sd[f'{b}.downsample.proj.weight'],
                             sd[f'{b}.downsample.proj.bias'], stride=2)
                B, C, H, W = x.shape
                x = x.flatten(2).transpose(1, 2)
            h = p['num_heads'][s]
            t = ln(x, f'{b}.norm1', 1e-5)  # blocks: PyTorch's default eps
            q = lin(t, f'{b}.attn.q').view(B, -1, h, C // h).transpose(1, 2)
            y = F.avg_pool2d(t.transpose(1, 2).reshape(B, C, H, W), sr[s])
            y = F.conv2d(y, sd[f'{b}.attn.sr.weight'], sd[f'{b}.attn.sr.bias'])
            y = ln(y.flatten(2).transpose(1, 2), f'{b}.attn.norm', 1e-5)
            kv = lin(y, f'{b}.attn.kv').view(B, -1, 2, h, C // h)
            kk, v = kv.permute(2, 0, 3, 1, 4)
            a = (q @ kk.transpose(-1, -2) * (C // h)**-.5).softmax(-1)
            x = x + lin((a @ v).transpose(1, 2).reshape(B, -1, C),
                        f'{b}.attn.proj')
            t = lin(F.gelu(lin(ln(x, f'{b}.norm2', 1e-5), f'{b}.mlp.fc1')),
                    f'{b}.mlp.fc2')
            x = x + t
            k += 1
    return ln(x, 'norm').transpose(1, 2).reshape(B, C, H, W)


@pytest.mark.parametrize('arch', ['swin', 'pvt'])
def test_official_layout_round_trip(arch):
    sd = official_swin_state() if arch == 'swin' else official_pvt_state()
    converted, detected = official.official_to_mmum(sd)
    assert detected == arch
    model = MODELS.build(um_mae_cfg(arch))
    # strict: every tensor has a place and every place a tensor
    model.load_state_dict(converted, strict=True)
    back = official.mmum_to_official(converted, arch)
    assert set(back) == set(sd)
    lossy = set()
    if arch == 'swin':  # the documented, function-preserving rewrite
        lossy = {k for k in sd if k.endswith('posmlp.2.bias')}
        assert all((back[k] == 0).all() for k in lossy)
    for k in set(sd) - lossy:
        assert torch.allclose(back[k], sd[k], atol=1e-6), k
    # mmum -> official -> mmum is exact
    again, _ = official.official_to_mmum(back)
    assert all(torch.allclose(again[k], converted[k], atol=1e-6)
               for k in converted)
    # the imported model trains
    x = torch.randn(1, 3, 256, 256)
    from mmpretrain.structures import DataSample

    from mmum.datasets.transforms import UniformMasking
    mask, sec = UniformMasking().sample(16, 16)
    ds = DataSample()
    ds.set_mask(torch.from_numpy(mask))
    ds.set_field(torch.from_numpy(sec), 'secondary_mask')
    assert torch.isfinite(model.loss(x, [ds])['loss'])


def test_official_pvt_forward_is_equal():
    sd = official_pvt_state()
    converted, _ = official.official_to_mmum(sd)
    backbone = {k[9:]: v for k, v in converted.items()
                if k.startswith('backbone.')}
    model = MODELS.build(dict(type='mmum.PVT', arch=PVT, img_size=256))
    model.load_state_dict(backbone, strict=True)
    model.eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        want = official_pvt_forward(sd, x)
        got = model(x)[-1]
    assert (got - want).abs().max() < 1e-5


def test_official_swin_pieces_are_equal():
    """The rewritten parts compute what the official ones compute: the
    bias MLP (ln coordinates, output bias) inside the window softmax, the
    LayerNorm + conv patch merging and the mask token before the norm."""
    sd = official_swin_state()
    converted, _ = official.official_to_mmum(sd)
    model = MODELS.build(um_mae_cfg('swin')).backbone
    model.load_state_dict(
        {k[9:]: v for k, v in converted.items() if k.startswith('backbone.')})
    # window attention of block 2 (stage 1, block 0), window 8, no shift
    attn = model.stages[1].blocks[0].attn.w_msa
    b, heads, win = 'blocks.2', 2, 8
    x = torch.randn(3, win * win, 64)
    ys, xs = torch.meshgrid(torch.arange(win), torch.arange(win),
                            indexing='ij')
    pos = torch.stack([ys.flatten(), xs.flatten()]).float()  # 2, N
    rel = pos[:, None, :] - pos[:, :, None]  # official: key minus query
    rel = torch.sign(rel) * torch.log(1 + rel.abs())
    hidden = F.relu(F.conv2d(rel[None], sd[f'{b}.attn.posmlp.0.weight'],
                             sd[f'{b}.attn.posmlp.0.bias']))
    bias = F.conv2d(hidden, sd[f'{b}.attn.posmlp.2.weight'],
                    sd[f'{b}.attn.posmlp.2.bias'])[0]  # heads, N, N
    qkv = F.linear(x, sd[f'{b}.attn.qkv.weight'], sd[f'{b}.attn.qkv.bias'])
    q, k, v = qkv.view(3, -1, 3, heads, 32).permute(2, 0, 3, 1, 4)
    a = (q @ k.transpose(-1, -2) * 32**-.5 + bias).softmax(-1)
    want = F.linear((a @ v).transpose(1, 2).reshape(3, -1, 64),
                    sd[f'{b}.attn.proj.weight'], sd[f'{b}.attn.proj.bias'])
    with torch.no_grad():
        assert (attn(x) - want).abs().max() < 1e-5
    # patch merging before stage 1
    t = torch.randn(2, 16 * 16, 32)
    n = F.layer_norm(t, (32, ), sd[f'{b}.downsample.norm.weight'],
                     sd[f'{b}.downsample.norm.bias'], 1e-6)
    want = F.conv2d(n.transpose(1, 2).reshape(2, 32, 16, 16),
                    sd[f'{b}.downsample.proj.weight'],
                    sd[f'{b}.downsample.proj.bias'], stride=2)
    got, hw = model.stages[0].downsample(t, (16, 16))
    assert hw == (8, 8)
    assert torch.allclose(got, want.flatten(2).transpose(1, 2), atol=1e-6)
    # secondary-masked units: the release puts the normalised
    # vis_mask_token there, mmum its mask_token through the embedding norm
    assert torch.equal(model.mask_token, sd['vis_mask_token'])
    token = F.layer_norm(sd['vis_mask_token'], (32, ),
                         sd['patch_embed.norm.weight'],
                         sd['patch_embed.norm.bias'], 1e-6)
    mask = torch.zeros(1, 4, 4)
    mask[0, 1, 2] = 1  # one masked unit = 4x4 tokens
    with torch.no_grad():
        tokens, hw = model.embed(torch.randn(1, 3, 64, 64), mask)
    tokens = tokens.view(1, *hw, 32)[0, 4:8, 8:12]
    assert torch.allclose(tokens, token.expand(4, 4, 32), atol=1e-6)


def test_importer_refuses_other_layouts():
    with pytest.raises(ValueError, match='not an official UM-MAE checkpoint'):
        official.official_to_mmum({'backbone.stages.0.w': torch.zeros(1)})
    sd = official_pvt_state()
    sd['blocks.0.attn.relative_position_bias_table'] = torch.zeros(3)
    with pytest.raises(ValueError, match='no mmum counterpart.*relative'):
        official.official_to_mmum(sd)
    with pytest.raises(ValueError, match="'swin' or 'pvt'"):
        official.mmum_to_official({}, 'vit')
    # a converted PVT does not load into a Swin
    converted, _ = official.official_to_mmum(official_pvt_state())
    swin = MODELS.build(um_mae_cfg('swin'))
    with pytest.raises(ValueError, match='another architecture'):
        swin.load_state_dict(converted)


# -- the released architecture is the default (issue 13, item 2) -------------
PVT_S = dict(embed_dims=[64, 128, 320, 512], depths=[3, 4, 6, 3],
             num_heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4])
RELEASED = {  # released model: (its mmum config, its state dict)
    'mae_swin_tiny_256': ('configs/um_mae/swin_t_200e.py', lambda: (
        official_swin_state(96, (2, 2, 6, 2), (3, 6, 12, 24), 32, D=512))),
    'mae_swin_large_256': ('configs/um_mae/swin_l_800e.py', lambda: (
        official_swin_state(192, (2, 2, 18, 2), (6, 12, 24, 48), 64, D=512,
                            depth=8))),
    'mae_pvt_small_256': ('configs/um_mae/pvt_s_200e.py', lambda: (
        official_pvt_state(PVT_S, D=512))),
}


@pytest.mark.parametrize('name', [
    'mae_swin_tiny_256', 'mae_pvt_small_256',
    pytest.param('mae_swin_large_256', marks=pytest.mark.slow)])
def test_released_checkpoint_loads_into_the_unchanged_config(name):
    """A state dict in the released key layout, at full size, converts and
    loads with a strict key check into the default config as it is; the
    importer names that config and no overrides."""
    path, state = RELEASED[name]
    converted, arch = official.official_to_mmum(state())
    assert official.released_config(converted, arch) == (path, {})
    model = MODELS.build(Config.fromfile(path).model)
    model.load_state_dict(converted, strict=True)
    # released eps: 1e-5 in the blocks (and PVT's key/value norm), 1e-6 in
    # every other norm of the encoder (merging included) and the decoder
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm):
            in_block = name.startswith('backbone.stages.') and name.endswith(
                ('.norm1', '.norm2', '.attn.norm'))
            assert m.eps == (1e-5 if in_block else 1e-6), name
    if arch == 'swin':
        assert model.backbone.stages[0].downsample.norm.eps == 1e-6


def test_swin_l_config_has_the_released_key_layout():
    """Tiny stand-in of the Swin-L config (its 64-wide bias MLP, LN + conv
    merging and 8 decoder blocks), for the default run."""
    cfg = copy.deepcopy(Config.fromfile('configs/um_mae/swin_l_800e.py').model)
    cfg.backbone.arch = SWIN
    cfg.neck.update(embed_dim=256, decoder_embed_dim=64, decoder_num_heads=4)
    sd = official_swin_state(hidden=64, depth=8)
    converted, _ = official.official_to_mmum(sd)
    MODELS.build(cfg).load_state_dict(converted, strict=True)


def test_importer_names_overrides_of_other_variants():
    """The 2-block Swin-L of the release (``..._dec512d2b``, 32-wide bias
    MLP) differs from swin_l_800e.py; the importer says how."""
    sd = {'backbone.patch_embed.projection.weight': torch.zeros(192, 3, 4, 4),
          'backbone.stages.0.blocks.0.attn.w_msa.cpb.mlp.0.weight':
          torch.zeros(32, 2),
          'neck.mask_token': torch.zeros(1, 1, 512),
          **{f'neck.decoder_blocks.{i}.ln1.weight': torch.zeros(512)
             for i in range(2)}}
    assert official.released_config(sd, 'swin') == (
        'configs/um_mae/swin_l_800e.py',
        {'model.neck.decoder_depth': 2, 'model.backbone.cpb_hidden_dims': 32})
    sd['backbone.patch_embed.projection.weight'] = torch.zeros(128, 3, 4, 4)
    with pytest.raises(ValueError, match='128-channel stem'):
        official.released_config(sd, 'swin')


def test_default_swin_t_has_the_released_parameter_count():
    """35.91 M parameters as the released ``mae_swin_tiny_256`` (with its
    secondary-mask token and fixed decoder positions)."""
    model = MODELS.build(Config.fromfile('configs/um_mae/swin_t_200e.py')
                         .model)
    ours = sum(p.numel() for p in model.parameters())
    released = sum(v.numel() for v in
                   RELEASED['mae_swin_tiny_256'][1]().values())
    # mmum drops each bias MLP's output bias (one per head, softmax-
    # invariant) and keeps a zero class-token row of decoder positions
    heads = 2 * 3 + 2 * 6 + 6 * 12 + 2 * 24
    assert ours == released - heads + 512
    assert round(ours / 1e6, 2) == round(released / 1e6, 2) == 35.91


def official_swin_forward(sd, x, depths=(2, 2, 2, 2), heads=(2, 2, 4, 4),
                          window=8):
    """The released Swin encoder on a dense image (no mask), written from
    its layout: LN-normalised conv stem; blocks of (shifted) window
    attention whose bias is ``posmlp(sign(d) ln(1 + |d|))`` with ``d`` = key
    minus query position and -100 between regions of a shifted window;
    LN + 2x2 conv merging; LayerNorm eps 1e-6, but 1e-5 in the blocks'
    norm1 / norm2 (built without the model's ``norm_layer``). Returns
    (B, C, h, w)."""
    ln = lambda t, n, eps=1e-6: F.layer_norm(  # noqa: E731
        t, t.shape[-1:], sd[f'{n}.weight'], sd[f'{n}.bias'], eps)
    lin = lambda t, n: F.linear(t, sd[f'{n}.weight'], sd[f'{n}.bias'])  # noqa
    x = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'],
                 stride=4)
    B, C, H, W = x.shape
    x = ln(x.flatten(2).transpose(1, 2), 'patch_embed.norm')
    k = 0
    for s, depth in enumerate(depths):
        for j in range(depth):
            b = f'blocks.{k}'
            if s > 0 and j == 0:
                t = ln(x, f'{b}.downsample.norm').transpose(1, 2)
                x = F.conv2d(t.reshape(B, C, H, W),
                             sd[f'{b}.downsample.proj.weight'],
                             sd[f'{b}.downsample.proj.bias'], stride=2)
                B, C, H, W = x.shape
                x = x.flatten(2).transpose(1, 2)
            win = min(window, H)
            shift = win // 2 if j % 2 and H > window else 0
            t = ln(x, f'{b}.norm1', 1e-5).view(B, H, W, C)
            t = torch.roll(t, (-shift, -shift), (1, 2))
            # region of each (rolled) row/column: 0 | 1 | 2 as in Swin
            r = torch.arange(H)
            r = (r >= H - win).long() + (r >= H - shift).long() \
                if shift else torch.zeros(H, dtype=torch.long)
            region = (r[:, None] * 3 + r[None, :]).float()
            nw = H // win

            def windows(t):  # B, H, W, c -> B * nw * nw, win * win, c
                t = t.view(t.shape[0], nw, win, nw, win, -1)
                return t.permute(0, 1, 3, 2, 4, 5).reshape(
                    -1, win * win, t.shape[-1])

            tw = windows(t)
            rw = windows(region.view(1, H, W, 1))[..., 0]  # nw*nw, N
            same = rw[:, :, None] == rw[:, None, :]
            ys, xs = torch.meshgrid(torch.arange(win), torch.arange(win),
                                    indexing='ij')
            pos = torch.stack([ys.flatten(), xs.flatten()]).float()
            d = pos[:, None, :] - pos[:, :, None]  # key minus query
            d = torch.sign(d) * torch.log(1 + d.abs())
            hid = F.relu(F.conv2d(d[None], sd[f'{b}.attn.posmlp.0.weight'],
                                  sd[f'{b}.attn.posmlp.0.bias']))
            bias = F.conv2d(hid, sd[f'{b}.attn.posmlp.2.weight'],
                            sd[f'{b}.attn.posmlp.2.bias'])[0]  # h, N, N
            h, N = heads[s], win * win
            q, kk, v = lin(tw, f'{b}.attn.qkv').view(
                -1, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
            a = q @ kk.transpose(-1, -2) * (C // h)**-.5 + bias
            a = a.view(B, nw * nw, h, N, N) + torch.where(
                same, 0., -100.)[None, :, None]
            y = (a.view(-1, h, N, N).softmax(-1) @ v).transpose(1, 2)
            y = lin(y.reshape(-1, N, C), f'{b}.attn.proj')
            y = y.view(B, nw, nw, win, win, C).permute(0, 1, 3, 2, 4, 5)
            y = torch.roll(y.reshape(B, H, W, C), (shift, shift), (1, 2))
            x = x + y.reshape(B, H * W, C)
            x = x + lin(F.gelu(lin(ln(x, f'{b}.norm2', 1e-5),
                                   f'{b}.mlp.fc1')), f'{b}.mlp.fc2')
            k += 1
    return ln(x, 'norm').transpose(1, 2).reshape(B, C, H, W)


def test_imported_swin_computes_the_released_encoder():
    """Dense forward (no mask, as at fine-tuning) of the default config's
    encoder loaded with converted weights == the released encoder written
    from its layout (shifted windows in stages 1-3, a clamped last one)."""
    sd = official_swin_state()
    converted, _ = official.official_to_mmum(sd)
    model = MODELS.build(um_mae_cfg('swin'))
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        got = model.backbone(x)[-1]
        want = official_swin_forward(sd, x)
    assert got.shape == want.shape == (2, 256, 8, 8)
    assert (got - want).abs().max() < 1e-4


def official_decoder_forward(sd, latent, mask, heads=16, pairing='raster'):
    """The released decoder, written from its layout: embed each token
    (C -> 4D), PixelShuffle x2 (one token per visible patch, in cell
    order), add position embeddings, append mask tokens with theirs, 2-layer
    pre-norm ViT blocks, norm, prediction. Returns predictions for the
    visible patches (in cell order), then for the dropped ones (in raster
    order of the grid).

    ``pairing='raster'`` adds the visible positions in raster order of the
    full grid, as the release does; ``'cell'`` adds each visible token its
    own position (the token of cell i gets the position of cell i's visible
    patch), as mmum does."""
    ln = lambda t, n: F.layer_norm(  # noqa: E731
        t, t.shape[-1:], sd[f'{n}.weight'], sd[f'{n}.bias'], 1e-6)
    lin = lambda t, n: F.linear(t, sd[f'{n}.weight'], sd[f'{n}.bias'])  # noqa
    B, C, h, w = latent.shape
    x = lin(latent.flatten(2).transpose(1, 2), 'decoder_embed')
    x = F.pixel_shuffle(x.transpose(1, 2).reshape(B, -1, h, w), 2)
    x = x.flatten(2).transpose(1, 2)  # B, N, D in cell order
    pos = sd['decoder_pos_embed'][0]  # L, D
    flat = mask.flatten(1).bool()
    if pairing == 'raster':
        vis_pos = torch.stack([pos[~f] for f in flat])
    else:
        from mmum.models.selfsup.um_mae import visible_index
        vis_pos = pos[visible_index(mask)]
    x = torch.cat([x + vis_pos, sd['mask_token'] + torch.stack(
        [pos[f] for f in flat])], 1)
    L, D = x.shape[1:]
    for i in range(len({k.split('.')[1] for k in sd
                        if k.startswith('decoder_blocks.')})):
        b = f'decoder_blocks.{i}'
        q, k, v = lin(ln(x, f'{b}.norm1'), f'{b}.attn.qkv').view(
            B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-1, -2) * (D // heads)**-.5).softmax(-1)
        x = x + lin((a @ v).transpose(1, 2).reshape(B, L, D),
                    f'{b}.attn.proj')
        x = x + lin(F.gelu(lin(ln(x, f'{b}.norm2'), f'{b}.mlp.fc1')),
                    f'{b}.mlp.fc2')
    return lin(ln(x, 'decoder_norm'), 'decoder_pred')


def grid_order(mask, visible):
    """(B, L) patch index of each output row of the released decoder, given
    the patch each visible token is taken for (B, N)."""
    dropped = torch.stack([f.nonzero()[:, 0] for f in mask.flatten(1).bool()])
    return torch.cat([visible, dropped], 1)


@pytest.fixture(scope='module')
def released_decoder():
    """The default Swin-T config's decoder (unchanged, full size) with
    converted weights of a released-layout decoder."""
    sd = {}
    official_decoder(sd, 768, D=512)
    sd['decoder_pos_embed'] *= 10  # make positions matter
    converted, _ = official.official_to_mmum(official_swin_state(D=8) | sd)
    neck = MODELS.build(Config.fromfile('configs/um_mae/swin_t_200e.py')
                        .model.neck)
    neck.load_state_dict({k[5:]: v for k, v in converted.items()
                          if k.startswith('neck.')}, strict=True)
    return sd, neck.eval()


def test_imported_decoder_computes_the_released_decoder(released_decoder):
    """Where the release pairs tokens and positions right (every cell keeps
    the same position, so cell order is raster order) both decoders agree."""
    from mmum.models.selfsup.um_mae import visible_index
    sd, neck = released_decoder
    torch.manual_seed(0)
    latent = torch.randn(2, 768, 4, 4)
    for p in range(4):
        cell = torch.ones(4)
        cell[p] = 0
        mask = cell.view(1, 1, 2, 1, 2).expand(2, 8, 2, 8, 2).reshape(
            2, 16, 16)
        with torch.no_grad():
            got = neck(latent, visible_index(mask))
            want = official_decoder_forward(sd, latent, mask)
        order = grid_order(mask, visible_index(mask))
        got = got.gather(1, order[..., None].expand_as(got))
        assert (got - want).abs().max() < 1e-4, p


def test_decoder_keeps_each_visible_token_at_its_own_position(
        released_decoder):
    """Issue 13 (Keep): for a general uniform mask the release adds the
    visible positions in raster order to tokens in cell order (most tokens
    get another patch's position); mmum gives each token its own position
    (paper §3.3) and so equals the released decoder with that pairing."""
    from mmum.datasets.transforms import UniformMasking
    from mmum.models.selfsup.um_mae import visible_index
    sd, neck = released_decoder
    np.random.seed(0)
    torch.manual_seed(0)
    mask = torch.stack([torch.from_numpy(UniformMasking().sample(16, 16)[0])
                        for _ in range(2)])
    index = visible_index(mask)
    raster = torch.stack([(m == 0).nonzero()[:, 0] for m in mask.flatten(1)])
    assert (raster != index).float().mean() > 0.5  # mostly another patch's
    latent = torch.randn(2, 768, 4, 4)
    with torch.no_grad():
        got = neck(latent, index)
        got = got.gather(1, grid_order(mask, index)[..., None].expand_as(got))
        ours = official_decoder_forward(sd, latent, mask, pairing='cell')
        theirs = official_decoder_forward(sd, latent, mask)
    assert (got - ours).abs().max() < 1e-4
    assert (got - theirs).abs().max() > 1e-2


# -- visualiser ----------------------------------------------------------------
def test_visualiser_writes_png(tmp_path, monkeypatch):
    cfg = Config.fromfile('configs/um_mae/swin_t_200e.py')
    cfg.model = um_mae_cfg('swin')
    cfg_path = str(tmp_path / 'tiny.py')
    cfg.dump(cfg_path)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ckpt = str(tmp_path / 'tiny.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    images = []
    for i, size in enumerate([(300, 260), (256, 400)]):
        yy, xx = np.mgrid[:size[0], :size[1]]
        img = np.stack([xx % 255, yy % 255, (xx + yy) % 255], -1)
        images.append(str(tmp_path / f'{i}.png'))
        cv2.imwrite(images[-1], img.astype(np.uint8))
    out = str(tmp_path / 'x.png')
    monkeypatch.setattr(
        sys, 'argv', ['x', cfg_path, ckpt, *images, '--out', out])
    visualize.main()
    png = cv2.imread(out)
    assert png is not None and png.shape[0] > 2 * 256 and \
        png.shape[1] > 4 * 256


def test_visualiser_uses_visible_statistics():
    """Dropped patches are de-normalised with their cell's visible patch."""
    model = MODELS.build(um_mae_cfg('swin'))
    from mmpretrain.structures import DataSample

    from mmum.datasets.transforms import UniformMasking
    mask, sec = UniformMasking().sample(16, 16)
    ds = DataSample()
    ds.set_mask(torch.from_numpy(mask))
    ds.set_field(torch.from_numpy(sec), 'secondary_mask')
    x = torch.randn(1, 3, 256, 256)
    model.neck.forward = lambda latent, index: torch.zeros(1, 256, 768)
    pred, m, _ = visualize.pixel_prediction(model, x, [ds])
    target = model.head.patchify(x)
    # a zero prediction becomes the mean of the cell's visible patch
    vis = int((m[0, :2, :2] == 0).nonzero()[0][0] * 16 +
              (m[0, :2, :2] == 0).nonzero()[0][1])
    for patch in (0, 1, 16, 17):
        assert torch.allclose(pred[0, patch], target[0, vis].mean().expand(
            768), atol=1e-5)
    assert math.isclose(float(m.sum()), 192)

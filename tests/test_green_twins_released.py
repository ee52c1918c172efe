"""GreenMIM Twins as released (issue 27): importer of the released Twins
checkpoints, the PEG without residual, eps, qkv biases and initialisation.

The released-layout state dicts are built here from the key layout of the
released GreenMIM Twins (``encoder.patch_embeds.i.proj`` with spconv's
(out, kh, kw, in) weights for stages 2-4, ``encoder.blocks.i.j``,
``encoder.pos_block.i.proj.0``, ``encoder.norm``, an MAE decoder). The
reference is written from the paper (§3.2: sparse convolutions see the
visible tokens only, attention runs over visible keys) and that layout: a
full-map Twins-SVT in which masked tokens are held at zero, attention masks
out keys with no visible input, and the PEG returns its depth-wise
convolution alone (the released option). No released code is used.
"""
import importlib.util
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmpretrain.models import SVT

import mmum  # noqa: F401
from mmum.models.backbones.green_twins import GreenTwins
from mmum.registry import MODELS
from mmum.utils import released_twins as rt

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG = osp.join(ROOT, 'configs', 'green_mim', 'twins_l_800e.py')
spec = importlib.util.spec_from_file_location(
    'green_mim_official_to_mmum',
    osp.join(ROOT, 'tools', 'model_converters',
             'green_mim_official_to_mmum.py'))
conv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conv)

TINY = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
            num_heads=[1, 2, 2, 4], patch_sizes=[4, 2, 2, 2],
            strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
            sr_ratios=[8, 4, 2, 1], window_sizes=[7, 7, 7, 7])
LARGE = dict(embed_dims=[128, 256, 512, 1024], depths=[2, 2, 18, 2],
             mlp_ratios=[4, 4, 4, 4], sr_ratios=[8, 4, 2, 1])
DEC = 32  # decoder width of the tiny state dicts

pytestmark = pytest.mark.usefixtures('one_thread')


def released_twins_state(arch=TINY, decoder=True, seed=0, scale=0.1):
    """Random weights in the released GreenMIM Twins key layout."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * scale

    sd, E = {}, 'encoder.'

    def lin(name, o, i):
        sd[E + name + '.weight'], sd[E + name + '.bias'] = r(o, i), r(o)

    def ln(name, c):
        sd[E + name + '.weight'], sd[E + name + '.bias'] = 1 + r(c), r(c)

    dims = arch['embed_dims']
    for i, (C, depth) in enumerate(zip(dims, arch['depths'])):
        k = arch['patch_sizes'][i]
        if i == 0:  # dense Conv2d: (out, in, kh, kw)
            sd[E + 'patch_embeds.0.proj.weight'] = r(C, 3, k, k)
        else:  # spconv: (out, kh, kw, in)
            sd[E + f'patch_embeds.{i}.proj.weight'] = r(C, k, k, dims[i - 1])
        sd[E + f'patch_embeds.{i}.proj.bias'] = r(C)
        ln(f'patch_embeds.{i}.norm', C)
        sd[E + f'pos_block.{i}.proj.0.weight'] = r(C, 1, 3, 3)
        sd[E + f'pos_block.{i}.proj.0.bias'] = r(C)
        hid, sr = arch['mlp_ratios'][i] * C, arch['sr_ratios'][i]
        for j in range(depth):
            b = f'blocks.{i}.{j}'
            ln(b + '.norm1', C)
            if j % 2 == 0:  # locally-grouped attention (timm Attention)
                lin(b + '.attn.qkv', 3 * C, C)
            else:  # global sub-sampled attention
                lin(b + '.attn.q', C, C)
                lin(b + '.attn.kv', 2 * C, C)
                if sr > 1:
                    sd[E + b + '.attn.sr.weight'] = r(C, sr, sr, C)
                    sd[E + b + '.attn.sr.bias'] = r(C)
                    ln(b + '.attn.norm', C)
            lin(b + '.attn.proj', C, C)
            ln(b + '.norm2', C)
            lin(b + '.mlp.fc1', hid, C)
            lin(b + '.mlp.fc2', C, hid)
    ln('norm', dims[-1])
    if decoder:
        C = dims[-1]
        sd['mask_token'] = r(1, 1, DEC)
        sd['decoder_pos_embed'] = r(1, 49, DEC)
        sd['decoder_embed.weight'], sd['decoder_embed.bias'] = r(DEC, C), r(
            DEC)
        for name, shape in [('norm1', None), ('attn.qkv', 3 * DEC),
                            ('attn.proj', DEC), ('norm2', None),
                            ('mlp.fc1', 4 * DEC), ('mlp.fc2', DEC)]:
            p = f'decoder_blocks.0.{name}'
            if shape is None:
                sd[p + '.weight'], sd[p + '.bias'] = 1 + r(DEC), r(DEC)
            else:
                fan_in = 4 * DEC if name == 'mlp.fc2' else DEC
                sd[p + '.weight'], sd[p + '.bias'] = r(shape, fan_in), r(
                    shape)
        sd['decoder_norm.weight'], sd['decoder_norm.bias'] = 1 + r(DEC), r(
            DEC)
        sd['decoder_pred.weight'] = r(32 * 32 * 3, DEC)
        sd['decoder_pred.bias'] = r(32 * 32 * 3)
    return sd


def full_map_reference(sd, img, keep, arch=TINY, peg_residual=False,
                       eps=1e-6):
    """Released Twins on the full map, written from its key layout and the
    paper: every stage's map holds zeros where no visible pixel reaches;
    LSA / GSA mask out keys without a visible input; the spconv weights
    (out, kh, kw, in) are used as such. Returns each stage's visible tokens
    (B, N_i, C_i), row-major; the last one after the final norm."""
    E = 'encoder.'

    def w(n):
        return sd[E + n + '.weight']

    def b(n):
        return sd[E + n + '.bias']

    def ln(t, n):
        return F.layer_norm(t, t.shape[-1:], w(n), b(n), eps)

    def lin(t, n):
        return F.linear(t, w(n), b(n))

    def attend(q, k, v, nh, key_ok):
        """q (B, Lq, C), k/v (B, Lk, C), key_ok (Lk,) bool."""
        B, Lq, C = q.shape
        q, k, v = (t.view(B, -1, nh, C // nh).transpose(1, 2)
                   for t in (q, k, v))
        a = q @ k.transpose(-1, -2) * (C // nh)**-0.5
        a = a.masked_fill(~key_ok, -1e30).softmax(-1)  # no NaN rows
        return (a @ v).transpose(1, 2).reshape(B, Lq, C)

    f = 2**(len(arch['strides']) + 1)  # total stride 32
    vis = keep.repeat_interleave(f, 0).repeat_interleave(f, 1)
    x = img * vis
    outs = []
    for i, depth in enumerate(arch['depths']):
        s, nh = arch['strides'][i], arch['num_heads'][i]
        pw = w(f'patch_embeds.{i}.proj')
        if i > 0:
            pw = pw.permute(0, 3, 1, 2)  # spconv -> Conv2d layout
        x = F.conv2d(x, pw, b(f'patch_embeds.{i}.proj'), stride=s)
        vis = F.max_pool2d(vis[None].float(), s)[0] > 0
        B, C, H, W = x.shape
        v = vis.flatten()[None, :, None]  # 1, L, 1

        def to_map(t):
            return t.transpose(1, 2).reshape(B, C, H, W)

        t = ln(x.flatten(2).transpose(1, 2), f'patch_embeds.{i}.norm') * v
        for j in range(depth):
            n = f'blocks.{i}.{j}'
            h = ln(t, n + '.norm1') * v
            if j % 2 == 0:  # LSA: 7x7 windows of the full map
                ws = arch['window_sizes'][i]

                def win(u):  # B, L, c -> B * nW, ws*ws, c
                    u = u.reshape(u.shape[0], H // ws, ws, W // ws, ws, -1)
                    return u.permute(0, 1, 3, 2, 4, 5).reshape(
                        -1, ws * ws, u.shape[-1])

                q, k, vv = lin(h, n + '.attn.qkv').chunk(3, -1)
                ok = win(v.expand(B, -1, -1).float()) > 0  # B*nW, ws*ws, 1
                q, k, vv = win(q), win(k), win(vv)
                y = torch.stack([
                    attend(q[m:m + 1], k[m:m + 1], vv[m:m + 1], nh,
                           ok[m, :, 0]) for m in range(q.shape[0])])[:, 0]
                y = y.reshape(B, H // ws, W // ws, ws, ws, C).permute(
                    0, 1, 3, 2, 4, 5).reshape(B, H * W, C)
            else:  # GSA: keys from the sub-sampled cells with visible input
                sr = arch['sr_ratios'][i]
                src, ok = h, vis.flatten()
                if sr > 1:
                    src = F.conv2d(to_map(h),
                                   w(n + '.attn.sr').permute(0, 3, 1, 2),
                                   b(n + '.attn.sr'), stride=sr)
                    ok = (F.max_pool2d(vis[None].float(), sr)[0] > 0).flatten()
                    src = ln(src.flatten(2).transpose(1, 2), n + '.attn.norm')
                k, vv = lin(src, n + '.attn.kv').chunk(2, -1)
                y = attend(lin(h, n + '.attn.q'), k, vv, nh, ok)
            t = (t + lin(y, n + '.attn.proj')) * v
            t = (t + lin(F.gelu(lin(ln(t, n + '.norm2'), n + '.mlp.fc1')),
                         n + '.mlp.fc2')) * v
            if j == 0:  # PEG: depth-wise 3x3 conv of the zero-filled map
                m = to_map(t)
                p = F.conv2d(m, w(f'pos_block.{i}.proj.0'),
                             b(f'pos_block.{i}.proj.0'), padding=1, groups=C)
                t = (p + m if peg_residual else p).flatten(2).transpose(
                    1, 2) * v
        if i == len(arch['depths']) - 1:
            t = ln(t, 'norm')
        outs.append(t[:, vis.flatten()])
        x = to_map(t)
    return outs


def _green(arch=TINY, **kw):
    return GreenTwins(arch=arch, qkv_bias=True, out_indices=(0, 1, 2, 3),
                      norm_cfg=dict(type='LN', eps=1e-6),
                      norm_after_stage=[False, False, False, True], **kw)


def _mask(seed, ratio=0.75):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(49, dtype=torch.bool)
    mask[torch.randperm(49, generator=g)[:round(49 * (1 - ratio))]] = False
    return mask.view(7, 7)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_imported_encoder_equals_full_map_reference(seed):
    """Importer + GreenTwins(peg_residual=False) = the released function on
    the visible tokens, every stage, float32 (<= 1e-5)."""
    sd = released_twins_state(seed=seed)
    state, arch = rt.official_twins_to_svt(sd)
    model = _green(peg_residual=False)
    model.load_state_dict(state, strict=True)
    torch.manual_seed(seed)
    img = torch.randn(2, 3, 224, 224)
    mask = _mask(seed)
    with torch.no_grad():
        ours = model.eval()(img, mask)
        ref = full_map_reference(sd, img, ~mask)
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert o.shape == r.shape, i
        err = ((o - r).abs().max() / r.abs().max()).item()
        assert err < 1e-5, (i, err)


def test_peg_residual_is_what_svt_computes():
    """With ``peg_residual=True`` the encoder equals the reference with the
    residual (Twins / SVT), and the two options differ: the released weights
    compute another function in mmpretrain's SVT."""
    sd = released_twins_state(seed=3)
    state, _ = rt.official_twins_to_svt(sd)
    img, mask = torch.randn(1, 3, 224, 224), _mask(3)
    with_res, without = _green(), _green(peg_residual=False)
    with_res.load_state_dict(state, strict=True)
    without.load_state_dict(state, strict=True)
    with torch.no_grad():
        a = with_res.eval()(img, mask)[-1]
        b = without.eval()(img, mask)[-1]
        ref = full_map_reference(sd, img, ~mask, peg_residual=True)[-1]
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-5)
        assert (a - b).abs().max() > 0.1 * b.abs().max()
        # dense paths: SVT = the residual option; the released option
        # without a mask = its own visible-only path on an empty mask
        svt = SVT(arch=TINY, qkv_bias=True, out_indices=(3, ),
                  norm_cfg=dict(type='LN', eps=1e-6),
                  norm_after_stage=[False, False, False, True])
        svt.load_state_dict(state, strict=True)
        for e in svt.patch_embeds:  # SVT hard-codes eps 1e-5 there
            e.norm.eps = 1e-6
        keep_all = torch.zeros(7, 7, dtype=torch.bool)
        dense_svt = svt.eval()(img)[0].flatten(2).transpose(1, 2)
        torch.testing.assert_close(dense_svt, with_res(img, keep_all)[-1],
                                   rtol=1e-5, atol=1e-5)
        dense = without(img)[-1].flatten(2).transpose(1, 2)
        torch.testing.assert_close(dense, without(img, keep_all)[-1],
                                   rtol=1e-5, atol=1e-5)


def test_spconv_weights_are_permuted_and_bad_layouts_refused():
    sd = released_twins_state(decoder=False)
    state, arch = rt.official_twins_to_svt(sd)
    w = sd['encoder.patch_embeds.1.proj.weight']  # 32, 2, 2, 16
    assert torch.equal(state['patch_embeds.1.projection.weight'][:, 5, 1, 0],
                       w[:, 1, 0, 5])
    w = sd['encoder.blocks.0.1.attn.sr.weight']  # 16, 8, 8, 16
    assert torch.equal(state['stages.0.1.attn.sr.weight'][:, 3, 7, 2],
                       w[:, 7, 2, 3])
    assert arch['sr_ratios'] == [8, 4, 2, 1] and arch['qkv_bias']
    sd['encoder.patch_embeds.1.proj.weight'] = w.new_zeros(32, 16, 2, 2)
    with pytest.raises(ValueError, match=r"spconv's \(out, 2, 2, 16\)"):
        rt.official_twins_to_svt(sd)
    sd = released_twins_state(decoder=False)
    sd['encoder.extra.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match="no SVT counterpart.*extra"):
        rt.official_twins_to_svt(sd)


@pytest.mark.parametrize('prefix', ['encoder.', ''])
def test_encoder_only_and_full_checkpoints_load_into_svt(prefix):
    sd = released_twins_state(decoder=prefix == 'encoder.')
    if not prefix:
        sd = {k[len('encoder.'):]: v for k, v in sd.items()}
    state, arch = rt.official_twins_to_svt(sd)
    settings = rt.model_settings(arch, 'mmpretrain.SVT')
    assert settings['qkv_bias'] and settings['norm_cfg']['eps'] == 1e-6
    svt = SVT(arch=TINY, qkv_bias=True,
              norm_after_stage=[False, False, False, True])
    svt.load_state_dict(state, strict=True)


def test_full_checkpoint_loads_into_the_tiny_config():
    """The mmum GreenMIM conversion (decoder included) loads strictly into
    configs/green_mim/twins_l_800e.py at a tiny size."""
    out, settings = rt.official_twins_to_mmum(released_twins_state())
    cfg = Config.fromfile(CFG).model
    assert settings['backbone']['peg_residual'] is False
    assert cfg.backbone.peg_residual is False and cfg.backbone.qkv_bias
    assert cfg.backbone.norm_cfg.eps == 1e-6
    assert cfg.backbone.init_cfg.type == 'mmum.GreenMIMTwinsInit'
    cfg.backbone.arch = TINY
    cfg.neck.update(embed_dim=128, decoder_embed_dim=DEC,
                    decoder_num_heads=2)
    MODELS.build(cfg).load_state_dict(out, strict=True)
    with pytest.raises(ValueError, match='encoder-only.*--backbone-only'):
        rt.official_twins_to_mmum(
            {k[8:]: v for k, v in released_twins_state(decoder=False).items()})


@pytest.mark.slow  # ~15 s: a full-size Twins-L model and state dict
def test_released_twins_l_loads_into_the_unchanged_config():
    """A full-size state dict in the released Twins-L layout converts and
    loads with a strict key check into configs/green_mim/twins_l_800e.py as
    it is; the importer names the SVT arch 'large'."""
    sd = released_twins_state(dict(TINY, **LARGE, num_heads=None),
                              scale=0.01)
    sd['decoder_embed.weight'] = torch.zeros(DEC, 1024)
    sd['decoder_pos_embed'] = torch.zeros(1, 49, DEC)
    out, settings = rt.official_twins_to_mmum(sd)
    assert settings['backbone']['arch'] == 'large'
    cfg = Config.fromfile(CFG).model
    cfg.neck.update(decoder_embed_dim=DEC, decoder_num_heads=2)
    MODELS.build(cfg).load_state_dict(out, strict=True)


def test_patch_embedding_norms_follow_norm_cfg():
    model = _green()
    assert {m.eps for m in model.modules()
            if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    with pytest.raises(ValueError, match='peg_residual must be True.*got 0'):
        GreenTwins(arch=TINY, peg_residual=0)


def test_released_initialisation():
    """Xavier-uniform Linear and dense convs (as (out, fan_in) matrices,
    zero biases), LayerNorm 1 / 0; the convolutions the release runs with
    spconv keep PyTorch's default (their biases are not zero)."""
    model = GreenTwins(arch=TINY, qkv_bias=True,
                       init_cfg=dict(type='mmum.GreenMIMTwinsInit'))
    model.init_weights()

    def bound(w):
        return math.sqrt(6 / (w.shape[0] + w[0].numel()))

    sparse = [model.patch_embeds[i].projection for i in (1, 2, 3)] + [
        model.stages[i][1].attn.sr for i in (0, 1, 2)]
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and \
                all(m is not s for s in sparse):
            w = m.weight
            assert w.abs().max() <= bound(w), name
            assert w.abs().max() > 0.8 * bound(w), name
            assert m.bias is None or not m.bias.any(), name
        elif isinstance(m, torch.nn.LayerNorm):
            assert (m.weight == 1).all() and not m.bias.any()
    for m in sparse:
        fan_in = m.weight[0].numel()
        assert m.weight.abs().max() <= 1 / math.sqrt(fan_in)
        assert m.bias.abs().max() > 0


def test_command_line_converts_twins(tmp_path, monkeypatch, capsys):
    src = str(tmp_path / 'released.pth')
    torch.save({'model': released_twins_state(), 'epoch': 1}, src)
    for extra, target in [([], 'mmum GreenMIM (GreenTwins)'),
                          (['--backbone-only'], 'mmpretrain SVT')]:
        dst = str(tmp_path / 'out.pth')
        monkeypatch.setattr('sys.argv', ['x', src, dst] + extra)
        conv.main()
        text = capsys.readouterr().out
        assert f'wrote {dst}' in text and target in text
        assert 'spconv weights (out, kh, kw, in)' in text
        assert 'peg_residual=False' in text
        state = torch.load(dst)['state_dict']
        assert any('position_encodings.3.proj' in k for k in state)
    assert "adds the PEG's input back" in text


def test_simmim_baseline_shares_the_released_architecture():
    """configs/simmim/twins_l_224_800e.py: the same Twins-L as GreenMIM's
    config (qkv biases, eps 1e-6 in every norm, PEG without residual), so
    only the method differs; its dense forward equals GreenTwins'."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'simmim',
                                   'twins_l_224_800e.py')).model.backbone
    assert cfg.peg_residual is False and cfg.qkv_bias
    cfg.arch = TINY
    simmim = MODELS.build(cfg)
    assert {m.eps for m in simmim.modules()
            if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    green = _green(peg_residual=False)
    state = {k: v for k, v in simmim.state_dict().items()
             if k != 'mask_token'}
    green.load_state_dict(state, strict=True)
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(simmim.eval()(img)[-1],
                                   green.eval()(img)[-1])

"""Our backbones as drop-ins for mmpretrain's (issue 20).

For every mmum backbone, the behaviours mmpretrain 1.2's own backbone tests
check for the class it stands in for (``SwinTransformer`` for the Swin
family, ``PCPVT`` for PVT, ``MAEViT`` for LocalMIM's ViT): construction,
output shapes for odd input sizes, frozen stages (``requires_grad`` and
``eval`` mode), ``norm_eval``, the drop-path schedule, ``init_cfg`` loading
and strict checkpoint round trips with the mmpretrain class where the
parameter layouts are shared. Written for mmum; tiny archs, small images.
"""
import copy
import inspect
import math
import os.path as osp
from itertools import chain

import pytest
import torch
from mmpretrain.models import (PCPVT, SVT, MAEViT, SwinTransformer,
                               VisionTransformer)
from torch.nn.modules.batchnorm import _BatchNorm

from mmum.models.backbones import (PVT, UMPVT, CPBSwinTransformer,
                                   GreenSwinTransformer, UMSwinTransformer)
from mmum.models.backbones.green_twins import GreenTwins
from mmum.models.selfsup.local_mim import LocalMIMViT

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SWIN_ARCH = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])
PVT_ARCH = dict(embed_dims=[16, 32, 32, 64], depths=[2, 1, 2, 1],
                num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
VIT_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2,
                feedforward_channels=64)
TWINS_ARCH = dict(embed_dims=[16, 32, 32, 64], depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 2, 4], patch_sizes=[4, 2, 2, 2],
                  strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
                  sr_ratios=[8, 4, 2, 1], window_sizes=[2, 2, 2, 2])

SWINS = {
    'CPBSwinTransformer': CPBSwinTransformer,
    'UMSwinTransformer': UMSwinTransformer,
    'GreenSwinTransformer': GreenSwinTransformer,
}
PVTS = {'PVT': PVT, 'UMPVT': UMPVT}


def build(name, **kw):
    """A tiny instance of the backbone ``name``."""
    if name in SWINS:
        kw = {'arch': SWIN_ARCH, 'window_size': 2, **kw}
        return SWINS[name](**kw)
    if name in PVTS:
        return PVTS[name](**{'arch': PVT_ARCH, 'img_size': 64, **kw})
    if name == 'GreenTwins':
        return GreenTwins(**{'arch': TWINS_ARCH, 'qkv_bias': True, **kw})
    assert name == 'LocalMIMViT'
    return LocalMIMViT(**{'arch': VIT_ARCH, 'img_size': 64, 'patch_size': 16,
                          'out_indices': (1, 3), **kw})


HIER = [*SWINS, *PVTS]  # four-stage pyramids
ALL = [*HIER, 'LocalMIMViT', 'GreenTwins']


pytestmark = pytest.mark.usefixtures('one_thread')


def ev(model):
    """``model.eval()`` returning the model (mmpretrain's Swin ``train``
    returns None)."""
    model.eval()
    return model


def _widths(model):
    if isinstance(model, SwinTransformer):
        return [model.embed_dims * 2**i for i in range(4)]
    return list(model.embed_dims)


# -- construction and output shapes ------------------------------------------
@pytest.mark.parametrize('name', HIER)
@pytest.mark.parametrize('size', [(64, 64), (130, 161), (97, 128)])
def test_dense_output_shapes_odd_sizes(name, size):
    """Dense forward (no mask). Swin: every stage at ceil(side / stride),
    as mmpretrain's Swin test checks for 256x309. PVT pads the image to a
    multiple of 32 first (documented), so stage i is ceil(side / 32) * 2^(3-i);
    the last stage agrees with Swin's."""
    model = ev(build(name, out_indices=(0, 1, 2, 3)))
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert isinstance(outs, tuple) and len(outs) == 4
    for i, (out, c) in enumerate(zip(outs, _widths(model))):
        s = 4 * 2**i
        if name in PVTS:
            side = [math.ceil(n / 32) * 32 // s for n in size]
        else:
            side = [math.ceil(n / s) for n in size]
        assert out.shape == (1, c, *side), (i, out.shape)


@pytest.mark.parametrize('name', HIER)
def test_default_out_indices(name):
    model = ev(build(name))
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96))
    assert len(outs) == 1 and outs[0].shape == (2, _widths(model)[3], 2, 3)


def test_vit_dense_output_shapes():
    model = ev(build('LocalMIMViT'))
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64), mask=None)
    # MAEViT's out_type='raw': class token + 4x4 patch tokens
    assert [tuple(o.shape) for o in outs] == [(1, 17, 32)] * 2


@pytest.mark.parametrize('name', ['CPBSwinTransformer', 'UMSwinTransformer',
                                  'GreenSwinTransformer', 'PVT', 'UMPVT'])
def test_custom_arch(name):
    """A custom arch dict sets widths, depths and heads per stage."""
    model = build(name)
    blocks = [len(s.blocks) for s in model.stages]
    assert blocks == list((SWIN_ARCH if name in SWINS else PVT_ARCH)['depths'])


@pytest.mark.parametrize('name', HIER)
def test_unknown_arch_is_a_clear_error(name):
    with pytest.raises((ValueError, AssertionError), match='arch'):
        build(name, arch='unknown')


# -- frozen stages, norm_eval, drop path -------------------------------------
@pytest.mark.parametrize('name', HIER)
@pytest.mark.parametrize('frozen', [0, 2])
def test_frozen_stages(name, frozen):
    model = build(name, frozen_stages=frozen, out_indices=(0, 1, 2, 3))
    model.init_weights()
    model.train()
    assert not model.patch_embed.training
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    for i in range(4):
        stage, norm = model.stages[i], getattr(model, f'norm{i}')
        params = list(stage.parameters()) + list(norm.parameters())
        if i <= frozen:
            assert not stage.training
            assert not any(p.requires_grad for p in params), i
        else:
            assert stage.training
            assert all(p.requires_grad for p in params), i
    # a frozen model still trains its free part
    out = model(torch.randn(1, 3, 64, 64))[-1]
    out.sum().backward()
    assert model.stages[3].blocks[0].norm1.weight.grad is not None
    assert model.stages[0].blocks[0].norm1.weight.grad is None


@pytest.mark.parametrize('name', ['CPBSwinTransformer', 'UMSwinTransformer',
                                  'PVT', 'UMPVT'])
def test_norm_eval_keeps_batchnorm_in_eval(name):
    """As mmpretrain's Swin test: BN norms everywhere, ``train()`` leaves
    them in eval mode with ``norm_eval=True`` (and in train mode without)."""
    bn = dict(type='BN')
    extra = {} if name in PVTS else dict(
        stage_cfgs=dict(block_cfgs=dict(norm_cfg=bn)))
    for norm_eval in (True, False):
        model = build(name, norm_eval=norm_eval, norm_cfg=bn, **extra)
        model.init_weights()
        model.train()
        bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        assert bns and all(m.training != norm_eval for m in bns)


def _drop_probs(model):
    if isinstance(model, SwinTransformer):
        blocks = chain(*[s.blocks for s in model.stages])
        return [(b.ffn.dropout_layer.drop_prob, b.attn.drop.drop_prob)
                for b in blocks]
    if isinstance(model, PVT):
        blocks = chain(*[s.blocks for s in model.stages])
        return [(getattr(b.drop_path, 'drop_prob', 0.), ) for b in blocks]
    if isinstance(model, SVT):
        return [(getattr(b.drop_path, 'drop_prob', 0.), )
                for b in chain(*model.stages)]
    return [(getattr(layer.ffn.dropout_layer, 'drop_prob', 0.), )
            for layer in model.layers]


@pytest.mark.parametrize('name', ALL)
def test_drop_path_linear_decay(name):
    model = build(name, drop_path_rate=0.2)
    probs = _drop_probs(model)
    for i, p in enumerate(probs):
        expect = 0.2 * i / (len(probs) - 1)
        assert all(math.isclose(q, expect, abs_tol=1e-7) for q in p), (i, p)


# -- init_cfg and checkpoints -------------------------------------------------
def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize('name', ALL)
def test_init_cfg_pretrained(name, tmp_path):
    torch.manual_seed(0)
    src = _perturbed(build(name))
    path = str(tmp_path / 'ckpt.pth')
    torch.save({'state_dict': src.state_dict()}, path)
    model = build(name, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k

    model = build(name, init_cfg=dict(type='Pretrained',
                                      checkpoint=str(tmp_path / 'absent')))
    with pytest.raises((OSError, FileNotFoundError)):
        model.init_weights()
    model = build(name, init_cfg=123)
    with pytest.raises(TypeError):
        model.init_weights()


@pytest.mark.parametrize('name', ALL)
def test_strict_round_trip_same_class(name):
    torch.manual_seed(0)
    src = _perturbed(build(name))
    dst = build(name)
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    ev(src), ev(dst)
    with torch.no_grad():
        kw = {'mask': None} if name == 'LocalMIMViT' else {}
        for a, b in zip(src(x, **kw), dst(x, **kw)):
            assert torch.equal(a, b)


def test_green_swin_round_trip_with_mmpretrain_swin():
    """GreenSwin's layout is mmpretrain's: strict both ways, same dense
    outputs."""
    torch.manual_seed(0)
    kw = dict(arch=SWIN_ARCH, window_size=2, out_indices=(0, 1, 2, 3),
              drop_path_rate=0.)
    green = ev(_perturbed(GreenSwinTransformer(**kw)))
    swin = ev(SwinTransformer(**kw))
    swin.load_state_dict(green.state_dict(), strict=True)
    back = ev(GreenSwinTransformer(**kw))
    back.load_state_dict(swin.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b, c in zip(green(x), swin(x), back(x)):
            assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize('size', [(64, 64), (97, 130)])
def test_green_twins_is_svt(size):
    """GreenTwins' layout is mmpretrain's SVT: strict both ways, the same
    dense outputs, also at odd sizes."""
    torch.manual_seed(0)
    kw = dict(arch=TWINS_ARCH, qkv_bias=True, out_indices=(0, 1, 2, 3),
              norm_after_stage=True)
    green = ev(_perturbed(GreenTwins(**kw)))
    svt = ev(SVT(**kw))
    svt.load_state_dict(green.state_dict(), strict=True)
    back = GreenTwins(**kw)
    back.load_state_dict(svt.state_dict(), strict=True)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs = green(x)
        for i, (a, b) in enumerate(zip(outs, svt(x))):
            assert torch.equal(a, b)
            s = 4 * 2**i
            assert a.shape[2:] == (math.ceil(size[0] / s),
                                   math.ceil(size[1] / s))


@pytest.mark.parametrize('ref', [MAEViT, VisionTransformer])
def test_local_mim_vit_round_trip_with_mmpretrain_vit(ref):
    torch.manual_seed(0)
    kw = dict(arch=VIT_ARCH, img_size=64, patch_size=16, out_indices=(1, 3))
    ours = ev(_perturbed(LocalMIMViT(**kw)))
    if ref is VisionTransformer:
        kw['out_type'] = 'raw'  # MAEViT's
    theirs = ev(ref(final_norm=False, **kw))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    kw.pop('out_type', None)
    back = LocalMIMViT(**kw)
    back.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    kw = {'mask': None} if ref is MAEViT else {}
    with torch.no_grad():
        for a, b in zip(ours(x, mask=None), theirs(x, **kw)):
            assert torch.equal(a, b)


@pytest.mark.parametrize('enc,dense', [
    ('UMSwinTransformer', 'CPBSwinTransformer'), ('UMPVT', 'PVT')])
def test_pretraining_encoder_loads_into_dense_backbone(enc, dense):
    """The pre-training encoder's weights (``mask_token`` aside) load
    strictly into the fine-tuning backbone, and the dense outputs agree."""
    torch.manual_seed(0)
    src = ev(_perturbed(build(enc)))
    dst = ev(build(dense))
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(src(x), dst(x)):
            assert torch.equal(a, b)


# -- issue 20 case 2: absolute position embedding resized on load ------------
@pytest.mark.parametrize('name', ['CPBSwinTransformer', 'UMSwinTransformer'])
def test_abs_pos_embed_resized_on_load(name):
    """As mmpretrain's ``SwinTransformer``: a 224-px checkpoint loads into a
    384-px model (strictly), the table resized bicubically like the
    parent's own hook does for ``SwinTransformer``."""
    torch.manual_seed(0)
    kw = dict(arch=SWIN_ARCH, window_size=2, use_abs_pos_embed=True)
    src = _perturbed(build(name, img_size=224, **kw))
    dst = build(name, img_size=384, **kw)
    swin = SwinTransformer(img_size=384, **kw)  # the reference resize
    state = {k: v for k, v in src.state_dict().items()
             if k == 'absolute_pos_embed' or k.startswith('patch_embed.')}
    swin.load_state_dict(state, strict=False)
    dst.load_state_dict(src.state_dict(), strict=True)
    assert src.absolute_pos_embed.shape == (1, 56 * 56, 16)
    assert dst.absolute_pos_embed.shape == (1, 96 * 96, 16)
    assert torch.equal(dst.absolute_pos_embed, swin.absolute_pos_embed)
    with torch.no_grad():
        assert ev(dst)(torch.randn(1, 3, 64, 64))[0].shape == (1, 128, 2, 2)


# -- issue 20 case 3: PVT's mmpretrain arguments and typed errors -------------
def _grads(model, x):
    model.zero_grad()
    outs = model(x)
    sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum()
        for o in outs).backward()
    return [o.detach() for o in outs], {
        k: p.grad.clone() for k, p in model.named_parameters()
        if p.grad is not None}


@pytest.mark.parametrize('name', ['PVT', 'CPBSwinTransformer',
                                  'GreenSwinTransformer'])
def test_with_cp_dense_same_outputs_and_grads(name):
    torch.manual_seed(0)
    kw = dict(out_indices=(0, 1, 2, 3), drop_path_rate=0.)
    plain = _perturbed(build(name, **kw))
    ckpt = build(name, with_cp=True, **kw)
    ckpt.load_state_dict(plain.state_dict())
    assert all(b.with_cp for s in ckpt.stages for b in s.blocks)
    x = torch.randn(2, 3, 64, 64)
    (o1, g1), (o2, g2) = _grads(plain, x), _grads(ckpt, x)
    # float rounding only: the checkpointed forward runs without autograd,
    # where SDPA may take its fused CPU kernel (4-D CPB attention) instead of
    # the math one
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys() and len(g1) == len(
        list(plain.parameters()))
    for k in g1:
        scale = g1[k].abs().max().clamp_min(1e-12)  # relative to the tensor
        torch.testing.assert_close(g1[k] / scale, g2[k] / scale, rtol=0,
                                   atol=1e-5, msg=k)  # float64: ~3e-15


def test_pvt_pcpvt_arguments():
    """``PCPVT``'s constructor arguments build a PVT and do what they say."""
    model = build('PVT', drop_rate=0.1, attn_drop_rate=0.2, qkv_bias=False,
                  norm_cfg=dict(type='LN', eps=1e-4),
                  block_norm_cfg=dict(type='LN', eps=1e-3),
                  norm_after_stage=False)
    block = model.stages[1].blocks[0]
    assert block.attn.q.bias is None and block.attn.kv.bias is None
    assert block.attn.attn_drop == 0.2 and block.attn.proj_drop.p == 0.1
    assert model.drop_after_pos.p == 0.1 and block.mlp[-1].p == 0.1
    assert block.norm1.eps == block.norm2.eps == 1e-3
    assert model.norm3.eps == 1e-4
    # defaults: the released UM-MAE layout (qkv biases, LN eps 1e-5 in the
    # blocks and the key/value norm, 1e-6 in the output norms)
    model = build('PVT')
    block = model.stages[0].blocks[0]
    assert block.attn.q.bias is not None
    assert block.norm1.eps == block.norm2.eps == block.attn.norm.eps == 1e-5
    assert model.norm3.eps == 1e-6
    with pytest.raises(ValueError, match='norm_after_stage=True'):
        build('PVT', norm_after_stage=True)


@pytest.mark.parametrize('kw,match', [
    (dict(sr_ratios=1), r'sr_ratios must be a list of 4 positive ints.*got 1'),
    (dict(sr_ratios='8, 4, 2, 1'), r"sr_ratios .*got '8, 4, 2, 1'"),
    (dict(sr_ratios=[8, 4, 2]), r'sr_ratios .*got \[8, 4, 2\]'),
    (dict(sr_ratios=[8, 4, 2, 0.5]), r'sr_ratios'),
    (dict(arch=3), r'PVT arch must be one of .* got 3'),
    (dict(arch='huge'), r"PVT arch 'huge' is not one of"),
    (dict(arch={**PVT_ARCH, 'mlp_ratios': 4}),
     r"arch\['mlp_ratios'\] must be a list of 4 positive numbers.*got 4"),
    (dict(arch={**PVT_ARCH, 'depths': [2, 2, 2]}),
     r"arch\['depths'\] must be a list of 4 positive ints"),
    (dict(arch={**PVT_ARCH, 'num_heads': '1248'}),
     r"arch\['num_heads'\]"),
    (dict(arch={k: v for k, v in PVT_ARCH.items() if k != 'mlp_ratios'}),
     r'dict with keys'),
])
@pytest.mark.parametrize('name', ['PVT', 'UMPVT'])
def test_pvt_wrongly_typed_arguments(name, kw, match):
    """Issue 20 case 3: ``PVT('small', sr_ratios=1)`` used to fail with
    ``TypeError: object of type 'int' has no len()``."""
    with pytest.raises(ValueError, match=match):
        build(name, **kw)


# -- issue 20 case 1: GreenSwinTransformer takes SwinTransformer's arguments --
def test_green_swin_signature_is_swin_transformers():
    """Every ``SwinTransformer`` constructor argument, same defaults."""
    ours = inspect.signature(GreenSwinTransformer.__init__).parameters
    theirs = inspect.signature(SwinTransformer.__init__).parameters
    assert list(ours) == list(theirs)
    for k, p in theirs.items():
        assert ours[k].default == p.default, k
    model = GreenSwinTransformer()
    assert model.arch_settings == SwinTransformer.arch_zoo['tiny']
    assert model.stages[3].blocks[1].attn.drop.drop_prob == pytest.approx(0.1)


LN6 = dict(type='LN', eps=1e-6)
# (GreenSwin arguments, the same model as mmpretrain Swin arguments)
SWIN_ARGS = {
    'img_size': (dict(img_size=128), None),
    'patch_size': (dict(patch_size=2), None),
    'in_channels': (dict(in_channels=1), None),
    'window_size': (dict(window_size=4), None),
    'drop_rate': (dict(drop_rate=0.1), None),
    'drop_path_rate': (dict(drop_path_rate=0.3), None),
    'out_indices': (dict(out_indices=(0, 2)), None),
    'out_after_downsample': (dict(out_after_downsample=True,
                                  out_indices=(0, 1, 2)), None),
    'use_abs_pos_embed': (dict(use_abs_pos_embed=True), None),
    'interpolate_mode': (dict(use_abs_pos_embed=True,
                              interpolate_mode='bilinear'), None),
    'with_cp': (dict(with_cp=True), None),
    'frozen_stages': (dict(frozen_stages=1), None),
    'norm_eval': (dict(norm_eval=True), None),
    'pad_small_map': (dict(pad_small_map=True), None),
    # GreenSwin's norm_cfg is the default of every LN (documented)
    'norm_cfg': (dict(norm_cfg=LN6), dict(
        norm_cfg=LN6, patch_cfg=dict(norm_cfg=LN6),
        stage_cfgs=dict(block_cfgs=dict(norm_cfg=LN6),
                        downsample_cfg=dict(norm_cfg=LN6)))),
    'stage_cfgs': (dict(stage_cfgs=[dict(block_cfgs=dict(ffn_ratio=2.))] * 2
                        + [dict(block_cfgs=[dict(ffn_ratio=3.)] * 2)] * 2),
                   None),
    'patch_cfg': (dict(patch_cfg=dict(norm_cfg=LN6)), None),
    'init_cfg': (dict(init_cfg=dict(type='Constant', layer='Linear',
                                    val=0.01)), None),
}


def _green_and_swin(green_kw, swin_kw):
    torch.manual_seed(0)
    base = dict(arch=SWIN_ARCH, window_size=2, out_indices=(0, 1, 2, 3))
    green = GreenSwinTransformer(**{**base, **green_kw})
    green.init_weights()
    _perturbed(green)
    swin = SwinTransformer(**{**base, **(swin_kw or green_kw)})
    swin.load_state_dict(green.state_dict(), strict=True)
    return ev(green), ev(swin)


@pytest.mark.parametrize('arg', sorted(SWIN_ARGS))
def test_green_swin_argument_dense_is_swin(arg):
    """Each argument builds, and without a mask GreenSwin computes what
    ``SwinTransformer`` with the same argument computes; with an
    all-visible mask the visible-token path gives the same tokens (every
    argument here applies to both paths at this size)."""
    green, swin = _green_and_swin(*SWIN_ARGS[arg])
    # (pad_small_map: no stage map at most the window, see below)
    size = {'img_size': 128, 'patch_size': 32, 'window_size': 128,
            'pad_small_map': 128}.get(arg, 64)
    x = torch.randn(2, green.patch_embed.projection.in_channels, size, size)
    with torch.no_grad():
        dense, ref = green(x), swin(x)
        s = green.total_stride
        visible = green(x, torch.zeros(size // s, size // s, dtype=torch.bool))
    assert len(dense) == len(ref) == len(visible)
    for a, b, v in zip(dense, ref, visible):
        assert torch.equal(a, b)
        torch.testing.assert_close(v, a.flatten(2).transpose(1, 2),
                                   rtol=1e-5, atol=1e-5)


def test_green_swin_frozen_and_norm_eval_on_the_visible_path():
    green = GreenSwinTransformer(arch=SWIN_ARCH, window_size=2,
                                 frozen_stages=1, norm_eval=True,
                                 norm_cfg=dict(type='BN'))
    green.train()
    assert not green.stages[1].training and green.stages[2].training
    assert all(not m.training for m in green.modules()
               if isinstance(m, _BatchNorm))
    green = GreenSwinTransformer(arch=SWIN_ARCH, window_size=2,
                                 frozen_stages=1)
    green.train()
    mask = torch.tensor([[False, True], [True, False]])
    green(torch.randn(1, 3, 64, 64), mask)[-1].sum().backward()
    assert green.stages[1].blocks[0].norm1.weight.grad is None
    assert green.stages[2].blocks[0].norm1.weight.grad is not None


def test_green_swin_dense_only_arguments_refused_on_the_visible_path():
    x, mask = torch.randn(1, 3, 64, 64), torch.tensor([[False, True],
                                                      [True, False]])
    # stage 3 is 2x2 tokens, not larger than the window: Swin pads
    green = GreenSwinTransformer(arch=SWIN_ARCH, window_size=4,
                                 pad_small_map=True)
    assert ev(green)(x)[0].shape == (1, 128, 2, 2)  # dense: padded windows
    with pytest.raises(ValueError, match=r'pad_small_map=True: stage 2 .*'
                       r'dense path \(mask=None\) only'):
        green(x, mask)
    green = GreenSwinTransformer(
        arch=SWIN_ARCH, window_size=2,
        stage_cfgs=[dict(block_cfgs=dict(window_size=4))] + [dict()] * 3)
    with pytest.raises(ValueError, match=r'stage 0 has window size\(s\) \[4\]'
                       r'.*dense path'):
        green(x, mask)
    green = GreenSwinTransformer(
        arch=SWIN_ARCH, window_size=2,
        stage_cfgs=dict(downsample_cfg=dict(kernel_size=3, stride=2)))
    with pytest.raises(ValueError, match=r'stage 0 merges \(3, 3\) patches '
                       r'with stride \(2, 2\).*kernel 2, stride 2'):
        green(torch.randn(1, 3, 128, 128), torch.zeros(4, 4, dtype=bool))
    with pytest.raises(ValueError, match='GroupWindowAttention'):
        GreenSwinTransformer(arch=SWIN_ARCH, stage_cfgs=dict(
            block_cfgs=dict(attn_cfgs=dict(window_msa=object))))


def test_green_mim_configs_set_arch_and_drop_path():
    """The new defaults (mmpretrain's 'tiny', 0.1) change nothing the
    GreenMIM configs build: they set both."""
    from mmengine.config import Config
    for name, arch in [('swin_b_800e', 'base'), ('swin_l_800e', 'large')]:
        cfg = Config.fromfile(osp.join(ROOT, 'configs', 'green_mim',
                                       f'{name}.py'))
        assert cfg.model.backbone.arch == arch
        assert cfg.model.backbone.drop_path_rate == 0.0


# -- issue 20 Deliver 2: with_cp on the masked (pre-training) path ------------
def _saved_bytes(fn, inputs):
    """Bytes of the tensors autograd saves for the backward while ``fn``
    runs (each storage once; the ``inputs`` batch, alive anyway, not
    counted), and ``fn``'s result."""
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    seen.pop(inputs.untyped_storage().data_ptr(), None)
    return sum(seen.values()), out


def _masked_encoders():
    from mmum.models.selfsup.local_mim import LocalMIMSwin
    g = torch.Generator().manual_seed(1)
    um_mask = (torch.rand(2, 4, 4, generator=g) < 0.25).float()
    # original unit (of the 8x8 grid of a 128-px image) of each compact unit
    cell = torch.randint(0, 4, (2, 4, 4), generator=g)
    r, c = torch.meshgrid(torch.arange(4), torch.arange(4), indexing='ij')
    index = ((2 * r + cell // 2) * 8 + 2 * c + cell % 2).flatten(1)
    compact = dict(arch=SWIN_ARCH, window_size=8, img_size=64,
                   drop_path_rate=0.)
    return {
        # name: (builder, input, forward kwargs); compact input 64 = 128 px
        'UMSwinTransformer': (lambda **kw: UMSwinTransformer(
            **{**compact, 'out_indices': (0, 1, 2, 3), **kw}), (2, 3, 64, 64), dict(mask=um_mask,
                                                   index=index)),
        'UMSwinTransformer-compact': (lambda **kw: UMSwinTransformer(
            **compact, positions='compact', out_indices=(0, 1, 2, 3), **kw), (2, 3, 64, 64),
            dict(mask=um_mask)),
        'LocalMIMSwin': (lambda **kw: LocalMIMSwin(
            **{**compact, 'out_indices': (0, 1, 2, 3), **kw}),
                         (2, 3, 64, 64), dict(mask=um_mask)),
        'UMPVT': (lambda **kw: UMPVT(arch=PVT_ARCH, img_size=64,
                                     out_indices=(0, 1, 2, 3), **kw),
                  (2, 3, 64, 64), dict(mask=um_mask, index=index)),
        'GreenSwinTransformer': (lambda **kw: GreenSwinTransformer(
            arch=SWIN_ARCH, window_size=4, drop_path_rate=0.,
            out_indices=(0, 1, 2, 3), **kw), (2, 3, 128, 128),
            dict(mask=torch.rand(4, 4, generator=g) < 0.75)),
        'GreenTwins': (lambda **kw: GreenTwins(
            arch=TWINS_ARCH, qkv_bias=True, out_indices=(0, 1, 2, 3), **kw),
            (2, 3, 128, 128),
            dict(mask=torch.rand(4, 4, generator=g) < 0.75)),
        'LocalMIMViT': (lambda **kw: LocalMIMViT(
            arch=VIT_ARCH, img_size=128, patch_size=16, out_indices=(1, 3),
            **kw), (2, 3, 128, 128), dict(mask=True)),
    }


@pytest.mark.parametrize('name', sorted(_masked_encoders()))
def test_with_cp_masked_path_same_loss_grads_less_saved(name):
    """``with_cp=True`` on the pre-training path: the same outputs and
    gradients (<= 1e-6) and fewer bytes saved for the backward."""
    build_enc, shape, kw = _masked_encoders()[name]
    torch.manual_seed(0)
    plain = _perturbed(build_enc())
    ckpt = build_enc(with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(*shape)
    results = []
    for model in (plain, ckpt):
        model.train()
        model.zero_grad()
        torch.manual_seed(0)  # LocalMIMViT draws its mask
        saved, outs = _saved_bytes(lambda: model(x, **kw), x)
        if name == 'LocalMIMViT':
            outs = outs[0]
        # a mean, as the pre-training losses are
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).mean()
                   for o in outs)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()
                 if p.grad is not None}
        results.append((saved, loss.detach(), grads))
    (s1, l1, g1), (s2, l2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=0, atol=1e-6)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for k in g1:
        diff = (g1[k] - g2[k]).abs().max().item()
        assert diff <= 1e-6, (k, diff, g1[k].abs().max().item())
    assert s2 < 0.5 * s1, (s1, s2)


def test_local_mim_vit_with_cp_dense_and_final_norm():
    model = build('LocalMIMViT', with_cp=True)
    with torch.no_grad():  # feature extraction: nothing to checkpoint
        assert model(torch.randn(1, 3, 64, 64), mask=None)[0].shape == (
            1, 17, 32)
    with pytest.raises(ValueError, match='checkpoints the masked path only'):
        model(torch.randn(1, 3, 64, 64), mask=None)
    with pytest.raises(ValueError, match='final_norm=True'):
        build('LocalMIMViT', final_norm=True)


def test_green_twins_with_cp_dense_path():
    model = build('GreenTwins', with_cp=True)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 64, 2, 2)
    with pytest.raises(ValueError, match='checkpoints the visible-token'):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize('name', ['UMSwinTransformer', 'LocalMIMSwin'])
def test_um_swin_masked_path_arguments(name):
    """UM-MAE's Swin: ``out_after_downsample`` is honoured on the masked
    path, ``use_abs_pos_embed`` / ``pad_small_map`` (where it would pad)
    are refused there with the reason, and honoured by the dense path."""
    build_enc, shape, kw = _masked_encoders()[name]
    x = torch.randn(*shape)
    model = ev(build_enc(out_after_downsample=True,
                         out_indices=(0, 1, 2)))
    with torch.no_grad():
        outs = model(x, **kw)
    assert [tuple(o.shape) for o in outs] == [
        (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    model = build_enc(use_abs_pos_embed=True)
    assert ev(model)(x)[0].shape[0] == 2  # dense path
    with pytest.raises(ValueError, match='use_abs_pos_embed=True applies to '
                       r'the dense path \(mask=None\) only'):
        model(x, **kw)
    model = build_enc(pad_small_map=True)
    assert ev(model)(x)[0].shape[0] == 2
    with pytest.raises(ValueError, match=r'pad_small_map=True applies to the '
                       r'dense path \(mask=None\) only: stage 1'):
        model(x, **kw)


# -- Deliver 1: the mmpretrain class's arguments, at its defaults -------------
STAND_INS = {  # ours: (mmpretrain class, arguments refused with a reason)
    'CPBSwinTransformer': (SwinTransformer, {}),
    'UMSwinTransformer': (SwinTransformer, {}),
    'GreenSwinTransformer': (SwinTransformer, {}),
    'PVT': (PCPVT, {}),
    'UMPVT': (PCPVT, {}),
    'LocalMIMViT': (MAEViT, {'final_norm': 'final_norm=True'}),
    'GreenTwins': (SVT, {}),
}


@pytest.mark.parametrize('name', sorted(STAND_INS))
def test_every_argument_of_the_mmpretrain_class(name):
    """Each backbone builds with every constructor argument of the class it
    stands in for, set to that class's default (``arch`` aside: ours are
    tiny), one at a time; the arguments it cannot honour raise a
    ``ValueError`` that names them."""
    cls, refused = STAND_INS[name]
    params = inspect.signature(cls.__init__).parameters
    for arg, p in params.items():
        if arg in ('self', 'arch') or p.default is inspect.Parameter.empty:
            continue
        kw = {arg: copy.deepcopy(p.default)}
        if arg in refused:
            with pytest.raises(ValueError, match=refused[arg]):
                build(name, **kw)
        else:
            build(name, **kw)

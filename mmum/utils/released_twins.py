"""Released GreenMIM Twins checkpoints (LayneH/GreenMIM,
``green_mim_twins_large_patch4_dec512b1``) -> mmum ``GreenTwins`` /
mmpretrain ``SVT`` keys; used by
``tools/model_converters/green_mim_official_to_mmum.py``.

Layout (``E`` = ``encoder.`` in a pre-training checkpoint, nothing in an
encoder-only state dict; ``i`` stage, ``j`` block, ``k`` decoder block):

=======================================  ===================================
released                                 GreenTwins / SVT
=======================================  ===================================
``E patch_embeds.0.proj`` (Conv2d)       ``patch_embeds.0.projection``
``E patch_embeds.i.proj`` (spconv, i>0)  ``patch_embeds.i.projection`` (*)
``E patch_embeds.i.norm``                ``patch_embeds.i.norm``
``E blocks.i.j.norm1 / norm2``           ``stages.i.j.norm1 / norm2``
``E blocks.i.j.attn.qkv / proj`` (LSA)   ``stages.i.j.attn.qkv / proj``
``E blocks.i.j.attn.q / kv / proj /      ``stages.i.j.attn.q / kv / proj /
norm`` (GSA)                             norm``
``E blocks.i.j.attn.sr`` (spconv)        ``stages.i.j.attn.sr`` (*)
``E blocks.i.j.mlp.fc1 / fc2``           ``stages.i.j.ffn.layers.0.0 /
                                         ffn.layers.1``
``E pos_block.i.proj.0``                 ``position_encodings.i.proj``
``E norm``                               ``norm_after_stage{last}``
``decoder_embed / decoder_pred /         ``neck.decoder_embed / decoder_pred
mask_token``                             / mask_token``
``decoder_pos_embed`` (1, L, D)          ``neck.decoder_pos_embed``
                                         (1, 1 + L, D), zero class row
``decoder_blocks.k.*`` (timm Block)      ``neck.decoder_blocks.k.*``
``decoder_norm``                         ``neck.ln1``
=======================================  ===================================

(*) spconv 2 stores a convolution's weight as (out, kh, kw, in); PyTorch's
``Conv2d`` as (out, in, kh, kw): permuted ``(0, 3, 1, 2)``.

The released Twins differs from Twins / mmpretrain's ``SVT`` in function,
not in keys: its position encoding generator (PEG) has no residual (it
returns the depth-wise convolution of the tokens alone), and every
LayerNorm has eps 1e-6. ``mmum.GreenTwins(peg_residual=False,
norm_cfg=dict(type='LN', eps=1e-6), qkv_bias=True)`` computes the released
encoder; ``SVT`` adds the PEG's input back (and keeps eps 1e-5 in its
patch-embedding norms), so the same weights compute another function there.
"""
import re
from collections import OrderedDict
from typing import Dict, Tuple

import torch

from .released import TIMM_VIT_BLOCK

LN_EPS = 1e-6  # every LayerNorm of the released GreenMIM models
HEAD_DIMS = 32  # every SVT arch (heads are not stored in the weights)
DECODER_HEADS = 16  # released decoders
WINDOW = 7  # the released Twins-L's locally-grouped windows (wss)
LSA = ('attn.qkv', 'attn.proj')
GSA = ('attn.q', 'attn.kv', 'attn.proj', 'attn.norm')
FFN = {'mlp.fc1': 'ffn.layers.0.0', 'mlp.fc2': 'ffn.layers.1'}
DECODER = {'decoder_embed': 'decoder_embed', 'decoder_norm': 'ln1',
           'decoder_pred': 'decoder_pred', 'mask_token': 'mask_token'}


def twins_prefix(sd: Dict[str, torch.Tensor]):
    """``'encoder.'`` (pre-training checkpoint) or ``''`` (encoder-only) if
    ``sd`` holds a released GreenMIM Twins, else None."""
    for prefix in ('encoder.', ''):
        if f'{prefix}pos_block.0.proj.0.weight' in sd and \
                f'{prefix}patch_embeds.0.proj.weight' in sd:
            return prefix
    return None


def twins_arch(sd: Dict[str, torch.Tensor], prefix: str) -> dict:
    """Architecture read from the weights: ``embed_dims``, ``depths``,
    ``patch_sizes`` / ``strides`` (kernel = stride), ``mlp_ratios``,
    ``sr_ratios`` and ``qkv_bias``."""
    dims, depths, patches, mlp, sr = [], [], [], [], []
    i = 0
    while f'{prefix}patch_embeds.{i}.norm.weight' in sd:
        dims.append(sd[f'{prefix}patch_embeds.{i}.norm.weight'].shape[0])
        patches.append(_kernel(sd[f'{prefix}patch_embeds.{i}.proj.weight'],
                               dims[i - 1] if i else None))
        j = 0
        while f'{prefix}blocks.{i}.{j}.norm1.weight' in sd:
            j += 1
        depths.append(j)
        mlp.append(sd[f'{prefix}blocks.{i}.0.mlp.fc1.weight'].shape[0] //
                   dims[-1])
        key = f'{prefix}blocks.{i}.1.attn.sr.weight'
        sr.append(_kernel(sd[key], dims[-1]) if key in sd else 1)
        i += 1
    return dict(embed_dims=dims, depths=depths, patch_sizes=patches,
                strides=list(patches), mlp_ratios=mlp, sr_ratios=sr,
                qkv_bias=f'{prefix}blocks.0.0.attn.qkv.bias' in sd)


def _kernel(w: torch.Tensor, cin) -> int:
    """Kernel side of a dense (out, in, k, k) conv weight (``cin`` None) or
    of an spconv (out, k, k, in) one; the layout is checked on conversion."""
    return w.shape[1] if cin is not None and w.shape[-1] == cin else \
        w.shape[-1]


def svt_arch(arch: dict):
    """The mmpretrain ``SVT`` arch name of ``arch`` or, for another size, a
    full arch dict (heads of width 32 and windows of 7, as every SVT arch
    and the release)."""
    from mmpretrain.models import SVT
    keys = ('embed_dims', 'depths', 'patch_sizes', 'strides', 'mlp_ratios',
            'sr_ratios')
    for name in ('small', 'base', 'large'):
        zoo = SVT.arch_zoo[name]
        if all(list(zoo[k]) == list(arch[k]) for k in keys):
            return name
    out = {k: list(arch[k]) for k in keys}
    out['num_heads'] = [d // HEAD_DIMS for d in arch['embed_dims']]
    out['window_sizes'] = [WINDOW] * len(arch['embed_dims'])
    return out


def _from_spconv(w: torch.Tensor, cin: int, k: int, key: str):
    """spconv (out, k, k, in) -> Conv2d (out, in, k, k)."""
    if w.dim() != 4 or tuple(w.shape[1:]) != (k, k, cin):
        raise ValueError(f'{key}: expected spconv\'s (out, {k}, {k}, {cin}) '
                         f'weight layout, got {tuple(w.shape)}')
    return w.permute(0, 3, 1, 2).contiguous()


def convert_twins_encoder(sd: Dict[str, torch.Tensor], prefix: str,
                          used: set) -> 'OrderedDict':
    """Released Twins encoder -> ``SVT`` / ``GreenTwins`` state dict (the
    module docstring's table); the keys read are added to ``used``."""
    arch = twins_arch(sd, prefix)
    out = OrderedDict()

    def take(key):
        used.add(prefix + key)
        return sd[prefix + key]

    def copy(src, dst, params=('weight', 'bias')):
        for p in params:
            if prefix + f'{src}.{p}' in sd:
                out[f'{dst}.{p}'] = take(f'{src}.{p}')

    dims = arch['embed_dims']
    for i, depth in enumerate(arch['depths']):
        src, dst = f'patch_embeds.{i}', f'patch_embeds.{i}'
        if i == 0:
            copy(f'{src}.proj', f'{dst}.projection')
        else:
            out[f'{dst}.projection.weight'] = _from_spconv(
                take(f'{src}.proj.weight'), dims[i - 1],
                arch['patch_sizes'][i], prefix + f'{src}.proj.weight')
            copy(f'{src}.proj', f'{dst}.projection', ('bias', ))
        copy(f'{src}.norm', f'{dst}.norm')
        copy(f'pos_block.{i}.proj.0', f'position_encodings.{i}.proj')
        for j in range(depth):
            b, s = f'blocks.{i}.{j}', f'stages.{i}.{j}'
            for name in ('norm1', 'norm2', *(GSA if j % 2 else LSA)):
                if name == 'attn.norm' and arch['sr_ratios'][i] == 1:
                    continue
                copy(f'{b}.{name}', f'{s}.{name}')
            for old, new in FFN.items():
                copy(f'{b}.{old}', f'{s}.{new}')
            if j % 2 and arch['sr_ratios'][i] > 1:
                out[f'{s}.attn.sr.weight'] = _from_spconv(
                    take(f'{b}.attn.sr.weight'), dims[i],
                    arch['sr_ratios'][i], prefix + f'{b}.attn.sr.weight')
                copy(f'{b}.attn.sr', f'{s}.attn.sr', ('bias', ))
    copy('norm', f'norm_after_stage{len(dims) - 1}')
    return out


def refuse_leftovers(sd, used: set, what: str,
                     source: str = 'the released Twins checkpoint') -> None:
    """ValueError naming the keys of ``sd`` not in ``used`` (the converter
    read them not): ``sd`` is not of the architecture ``what`` expects."""
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f'{len(left)} keys of {source} have no {what} '
                         f'counterpart (another architecture?): {left[:10]}')


def model_settings(arch: dict, target: str) -> dict:
    """Backbone settings the converted weights need in ``target``
    (``'mmum.GreenTwins'``: the released function; ``'mmpretrain.SVT'``)."""
    n = len(arch['embed_dims'])
    out = dict(type=target, arch=svt_arch(arch), qkv_bias=arch['qkv_bias'],
               norm_cfg=dict(type='LN', eps=LN_EPS),
               norm_after_stage=[False] * (n - 1) + [True])
    if target == 'mmum.GreenTwins':
        out['peg_residual'] = False
    return out


def official_twins_to_svt(sd: Dict[str, torch.Tensor]
                          ) -> Tuple['OrderedDict', dict]:
    """Released Twins state dict (full or encoder-only) -> (backbone state
    dict without prefix, arch). A pre-training checkpoint's decoder is
    dropped. Raises ValueError for another layout."""
    prefix = twins_prefix(sd)
    if prefix is None:
        raise ValueError('not a released GreenMIM Twins checkpoint: no '
                         "'[encoder.]pos_block.0.proj.0.weight' key")
    used = {k for k in sd if prefix and not k.startswith(prefix)}
    out = convert_twins_encoder(sd, prefix, used)
    refuse_leftovers(sd, used, 'SVT')
    return out, twins_arch(sd, prefix)


def convert_green_decoder(sd: Dict[str, torch.Tensor], used: set
                          ) -> Tuple[Dict[str, torch.Tensor], dict, int]:
    """The released GreenMIM decoder (the same for Swin and Twins) as
    ``mmum.GreenMIMDecoder`` keys (``neck.`` prefix): timm block names to
    mmpretrain's, and a zero class-token row in front of the fixed sin-cos
    ``decoder_pos_embed`` (1, L, D) -> (1, 1 + L, D). Adds the keys read to
    ``used``. Returns ``(state dict, neck settings, mask unit in px)``."""
    out = OrderedDict()
    for old, new in DECODER.items():
        for k in [k for k in sd if k == old or k.startswith(old + '.')]:
            out['neck.' + new + k[len(old):]] = sd[k]
            used.add(k)
    blocks = sorted({int(k.split('.')[1]) for k in sd
                     if re.match(r'decoder_blocks\.\d+\.', k)})
    for i in blocks:
        for old, new in TIMM_VIT_BLOCK.items():
            for p in ('weight', 'bias'):
                out[f'neck.decoder_blocks.{i}.{new}.{p}'] = sd[
                    f'decoder_blocks.{i}.{old}.{p}']
                used.add(f'decoder_blocks.{i}.{old}.{p}')
    pos = sd['decoder_pos_embed']  # 1, L, D
    out['neck.decoder_pos_embed'] = torch.cat(
        [pos.new_zeros(1, 1, pos.shape[-1]), pos], 1)
    used.add('decoder_pos_embed')
    unit = round((sd['decoder_pred.weight'].shape[0] // 3)**.5)  # u*u*3, D
    neck = dict(type='mmum.GreenMIMDecoder', num_patches=pos.shape[1],
                patch_size=unit, embed_dim=sd['decoder_embed.weight'].shape[1],
                decoder_embed_dim=pos.shape[-1], decoder_depth=len(blocks),
                decoder_num_heads=DECODER_HEADS,
                norm_cfg=dict(type='LN', eps=LN_EPS))
    return out, neck, unit


def official_twins_to_mmum(sd: Dict[str, torch.Tensor]
                           ) -> Tuple['OrderedDict', dict]:
    """Released Twins pre-training state dict (with decoder) -> (mmum
    ``GreenMIM`` state dict: ``backbone.`` / ``neck.`` keys, model
    settings). Raises ValueError for an encoder-only dict."""
    prefix = twins_prefix(sd)
    if prefix != 'encoder.':
        raise ValueError('an mmum GreenMIM checkpoint needs the decoder: '
                         'this is an encoder-only state dict (no '
                         "'encoder.' keys); use --backbone-only")
    used = set()
    out = OrderedDict(('backbone.' + k, v) for k, v in
                      convert_twins_encoder(sd, prefix, used).items())
    decoder, neck, unit = convert_green_decoder(sd, used)
    out.update(decoder)
    refuse_leftovers(sd, used, 'mmum GreenMIM')
    arch = twins_arch(sd, prefix)
    settings = dict(
        type='mmum.GreenMIM', mask_unit=unit,
        backbone=model_settings(arch, 'mmum.GreenTwins'), neck=neck,
        head=dict(patch_size=unit))
    return out, settings


def twins_summary(sd: Dict[str, torch.Tensor], backbone_only: bool) -> list:
    """What the conversion did and what the weights compute, one line per
    part (printed by the CLI)."""
    arch = twins_arch(sd, twins_prefix(sd))
    lines = [
        f"encoder: Twins-SVT embed_dims {arch['embed_dims']}, depths "
        f"{arch['depths']}, sr_ratios {arch['sr_ratios']}, qkv biases "
        f"{arch['qkv_bias']}; LayerNorm eps {LN_EPS} everywhere",
        f"{len(arch['depths']) - 1} sparse patch embeddings and "
        f"{sum(r > 1 for r in arch['sr_ratios'])} stages of spatial-"
        "reduction convolutions: spconv weights (out, kh, kw, in) -> "
        'Conv2d (out, in, kh, kw)',
        'the released PEG has no residual: mmum.GreenTwins(peg_residual='
        'False) computes the released encoder']
    if backbone_only:
        lines.append(
            "mmpretrain SVT adds the PEG's input back (and keeps eps 1e-5 "
            'in its patch-embedding norms): the weights load strictly but '
            'compute another function there (a starting point for fine-'
            'tuning); mmum.GreenTwins(peg_residual=False) keeps the '
            'released one; decoder dropped')
    return lines


__all__ = ['twins_prefix', 'twins_arch', 'svt_arch',
           'convert_twins_encoder', 'official_twins_to_svt',
           'official_twins_to_mmum', 'model_settings', 'twins_summary']

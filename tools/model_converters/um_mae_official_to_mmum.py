"""Import an official UM-MAE pre-training checkpoint into mmum's layout.

    python tools/model_converters/um_mae_official_to_mmum.py SRC DST

``SRC`` is a checkpoint of the official release (a dict whose ``'model'``
entry, or the dict itself, holds the flat MAE-style state dict): the full
pre-training model, or the encoder alone as the release publishes it (no
``decoder_*`` / ``mask_token``; ``vis_mask_token`` optional), which gives a
``DST`` with the ``backbone.`` keys only, and the script says what is
missing. ``DST`` gets
``{'state_dict': ..., 'meta': {...}}`` with mmum's ``backbone.`` / ``neck.``
keys. mmum's UM-MAE configs have the released architecture, so the result
loads with a strict key check into the unchanged pre-training config (to
continue pre-training) -- ``configs/um_mae/swin_t_200e.py`` for
``mae_swin_tiny_256``, ``swin_l_800e.py`` for ``mae_swin_large_256``
(``..._dec512d8b64pmd``), ``pvt_s_200e.py`` for ``mae_pvt_small_256`` -- and,
with ``prefix='backbone.'``, into the fine-tuning / mmdet / mmseg configs.
The script names that config; for a non-default variant (e.g. the 2-block
``mae_swin_large_256_dec512d2b``) it also prints the ``--cfg-options`` that
differ from it.

The official layout, as this importer understands it (Swin and PVT are
told apart by their attention keys):

=================================  ==========================================
official                           mmum
=================================  ==========================================
``patch_embed.proj.*``             ``backbone.patch_embed.projection.*``
``patch_embed.norm.*`` (Swin)      ``backbone.patch_embed.norm.*``
``pos_embed`` (PVT, 1 x hw x C)    ``backbone.pos_embed`` (resized on load)
``vis_mask_token``                 ``backbone.mask_token`` (*)
``blocks.{k}.*``, k over all       ``backbone.stages.{s}.blocks.{b}.*``; a
blocks of all stages               stage starts at every block with a
                                   ``downsample``
``blocks.{k}.norm1/norm2``         ``...norm1/norm2``
``blocks.{k}.attn.qkv/proj``       ``...attn.w_msa.qkv/proj`` (Swin)
``blocks.{k}.attn.posmlp.0``       ``...attn.w_msa.cpb.mlp.0`` (**)
``blocks.{k}.attn.posmlp.2``       ``...attn.w_msa.cpb.mlp.2`` (**)
``blocks.{k}.attn.q/kv/proj/       ``...attn.q/kv/proj/sr/norm`` (PVT)
sr/norm``
``blocks.{k}.mlp.fc1/fc2``         ``...ffn.layers.0.0/ffn.layers.1`` (Swin),
                                   ``...mlp.0/mlp.2`` (PVT)
``blocks.{k}.downsample.norm``     Swin: ``backbone.stages.{s-1}.downsample
``blocks.{k}.downsample.proj``     .norm/.proj`` (merge at the end of the
                                   previous stage, ``patch_merging='conv'``);
                                   PVT: ``backbone.stages.{s}.downsample
                                   .projection``
``norm.*``                         ``backbone.norm3.*``
``decoder_embed.*``                ``neck.decoder_embed.*`` (embed before
                                   PixelShuffle: ``UMMAEEmbedFirstDecoder``)
``mask_token``                     ``neck.mask_token``
``decoder_pos_embed`` (1 x L x D)  ``neck.decoder_pos_embed`` (1 x (1+L) x D,
                                   a zero class-token row in front)
``decoder_blocks.{i}.norm1/norm2`` ``neck.decoder_blocks.{i}.ln1/ln2``
``decoder_blocks.{i}.attn.*``      ``neck.decoder_blocks.{i}.attn.*``
``decoder_blocks.{i}.mlp.fc1/fc2`` ``neck.decoder_blocks.{i}.ffn.layers.0.0/
                                   ffn.layers.1``
``decoder_norm.*``                 ``neck.ln1.*``
``decoder_pred.*``                 ``neck.decoder_pred.*``
=================================  ==========================================

Assumptions and exact rewrites:

(*) copied as is. Swin: the release normalises ``vis_mask_token`` with
    ``patch_embed.norm`` before it replaces a token, and mmum's
    :class:`UMSwinTransformer` places its ``mask_token`` before that norm:
    the same function and the same parametrisation.
(**) the bias MLP is a pair of 1x1 convs on ``sign(d) * ln(1 + |d|)``
    with ``d`` = key position - query position; mmum's :class:`LogCPB` is
    two linears on ``sign(d) * log2(1 + |d|)`` with ``d`` = query - key and
    no output bias. The first weight is multiplied by ``-ln 2`` (exact), the
    output bias is dropped: it adds one constant per head to every logit,
    which the softmax cancels (exact). Its hidden width becomes
    ``cpb_hidden_dims``.

Both directions are implemented (:func:`official_to_mmum`,
:func:`mmum_to_official`); official -> mmum -> official is the identity but
for the dropped output bias (**). The official model uses LayerNorm eps 1e-6
in the patch embedding, patch merging, final norm and decoder, and 1e-5
(PyTorch's default) in the encoder blocks' norm1 / norm2 and PVT's key/value
norm; mmum's configs do the same (configs/_base_/models/encoder_layouts.py).
"""
from __future__ import annotations

import argparse
import math
import os.path as osp
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Dict, Tuple

# torch and mmum are imported where they are used, so that --help answers at
# once
if TYPE_CHECKING:
    import torch

PVT_BLOCK = {
    'norm1': 'norm1', 'norm2': 'norm2', 'attn.q': 'attn.q',
    'attn.kv': 'attn.kv', 'attn.proj': 'attn.proj', 'attn.sr': 'attn.sr',
    'attn.norm': 'attn.norm', 'mlp.fc1': 'mlp.0', 'mlp.fc2': 'mlp.2'
}
DECODER = {
    'decoder_embed': 'decoder_embed', 'decoder_norm': 'ln1',
    'decoder_pred': 'decoder_pred'
}


def detect_arch(sd: Dict[str, torch.Tensor]) -> str:
    if any(re.match(r'blocks\.\d+\.attn\.posmlp\.', k) for k in sd):
        return 'swin'
    if any(re.match(r'blocks\.\d+\.attn\.kv\.', k) for k in sd):
        return 'pvt'
    tops = sorted({k.split('.')[0] for k in sd})
    raise ValueError(
        'not an official UM-MAE checkpoint: expected flat keys '
        "'blocks.{i}.attn.posmlp.*' (Swin) or 'blocks.{i}.attn.kv.*' (PVT); "
        f'found top-level names {tops[:12]}')


def block_stages(num_blocks: int, starts) -> list:
    """(stage, index in stage) of each flat block; ``starts`` are the flat
    indices that open stages 1, 2, ... (those with a ``downsample``)."""
    out, s, b = [], 0, 0
    for k in range(num_blocks):
        if k in starts:
            s, b = s + 1, 0
        out.append((s, b))
        b += 1
    return out


def _sub(sd, old, new, out):
    """Copy every ``old.*`` tensor to ``new.*``; returns the keys used."""
    used = [k for k in sd if k == old or k.startswith(old + '.')]
    for k in used:
        out[new + k[len(old):]] = sd[k]
    return used


def official_to_mmum(sd: Dict[str, torch.Tensor]
                     ) -> Tuple[Dict[str, torch.Tensor], str]:
    """Official flat state dict -> (mmum state dict, ``'swin'``/``'pvt'``)."""
    import torch

    from mmum.utils.released import TIMM_SWIN_BLOCK, TIMM_VIT_BLOCK
    arch = detect_arch(sd)
    out, used = OrderedDict(), set()
    blocks = sorted({int(k.split('.')[1]) for k in sd
                     if k.startswith('blocks.')})
    if blocks != list(range(len(blocks))):
        raise ValueError(f'block indices are not 0..{len(blocks) - 1}: '
                         f'{blocks}')
    starts = {k for k in blocks if f'blocks.{k}.downsample.proj.weight' in sd}
    where = block_stages(len(blocks), starts)
    table = TIMM_SWIN_BLOCK if arch == 'swin' else PVT_BLOCK
    for k, (s, b) in enumerate(where):
        src, dst = f'blocks.{k}', f'backbone.stages.{s}.blocks.{b}'
        for old, new in table.items():
            used.update(_sub(sd, f'{src}.{old}', f'{dst}.{new}', out))
        if k in starts:
            ds = (f'backbone.stages.{s - 1}.downsample' if arch == 'swin'
                  else f'backbone.stages.{s}.downsample')
            if arch == 'swin':
                used.update(_sub(sd, f'{src}.downsample', ds, out))
            else:
                used.update(_sub(sd, f'{src}.downsample.proj',
                                 ds + '.projection', out))
        if arch == 'swin':
            mlp = f'{src}.attn.posmlp'
            cpb = f'{dst}.attn.w_msa.cpb.mlp'
            out[f'{cpb}.0.weight'] = sd[f'{mlp}.0.weight'].flatten(1) * \
                -math.log(2)
            out[f'{cpb}.0.bias'] = sd[f'{mlp}.0.bias']
            out[f'{cpb}.2.weight'] = sd[f'{mlp}.2.weight'].flatten(1)
            used.update(f'{mlp}.{i}.{p}' for i in (0, 2)
                        for p in ('weight', 'bias'))
    last = len(starts)
    used.update(_sub(sd, 'patch_embed.proj', 'backbone.patch_embed.projection',
                     out))
    used.update(_sub(sd, 'norm', f'backbone.norm{last}', out))
    if arch == 'swin':
        used.update(_sub(sd, 'patch_embed.norm', 'backbone.patch_embed.norm',
                         out))
    else:
        used.update(_sub(sd, 'pos_embed', 'backbone.pos_embed', out))
    used.update(_sub(sd, 'vis_mask_token', 'backbone.mask_token', out))

    for old, new in DECODER.items():
        used.update(_sub(sd, old, f'neck.{new}', out))
    used.update(_sub(sd, 'mask_token', 'neck.mask_token', out))
    for i in sorted({int(k.split('.')[1]) for k in sd
                     if k.startswith('decoder_blocks.')}):
        for old, new in TIMM_VIT_BLOCK.items():
            used.update(_sub(sd, f'decoder_blocks.{i}.{old}',
                             f'neck.decoder_blocks.{i}.{new}', out))
    if 'decoder_pos_embed' in sd:
        pos = sd['decoder_pos_embed']
        out['neck.decoder_pos_embed'] = torch.cat(
            [pos.new_zeros(1, 1, pos.shape[-1]), pos], 1)
        used.add('decoder_pos_embed')
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f'{len(left)} keys of the official {arch} '
                         f'checkpoint have no mmum counterpart: {left[:10]}')
    return out, arch


def mmum_to_official(sd: Dict[str, torch.Tensor],
                     arch: str) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`official_to_mmum` (the bias MLP's output bias is
    written as 0: the same function)."""
    from mmum.utils.released import TIMM_SWIN_BLOCK, TIMM_VIT_BLOCK
    if arch not in ('swin', 'pvt'):
        raise ValueError(f"arch must be 'swin' or 'pvt', got {arch!r}")
    out, used = OrderedDict(), set()
    depths = []
    for k in sd:
        m = re.match(r'backbone\.stages\.(\d+)\.blocks\.(\d+)\.', k)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            depths += [0] * (s + 1 - len(depths))
            depths[s] = max(depths[s], b + 1)
    table = TIMM_SWIN_BLOCK if arch == 'swin' else PVT_BLOCK
    k = 0
    for s, depth in enumerate(depths):
        for b in range(depth):
            src, dst = f'backbone.stages.{s}.blocks.{b}', f'blocks.{k}'
            for old, new in table.items():
                used.update(_sub(sd, f'{src}.{new}', f'{dst}.{old}', out))
            if b == 0 and s > 0:
                if arch == 'swin':
                    used.update(_sub(sd, f'backbone.stages.{s - 1}.downsample',
                                     f'{dst}.downsample', out))
                else:
                    used.update(_sub(
                        sd, f'backbone.stages.{s}.downsample.projection',
                        f'{dst}.downsample.proj', out))
            if arch == 'swin':
                cpb = f'{src}.attn.w_msa.cpb.mlp'
                mlp = f'{dst}.attn.posmlp'
                w0, w2 = sd[f'{cpb}.0.weight'], sd[f'{cpb}.2.weight']
                out[f'{mlp}.0.weight'] = (w0 / -math.log(2))[..., None, None]
                out[f'{mlp}.0.bias'] = sd[f'{cpb}.0.bias']
                out[f'{mlp}.2.weight'] = w2[..., None, None]
                out[f'{mlp}.2.bias'] = w2.new_zeros(w2.shape[0])
                used.update(f'{cpb}.{i}.{p}' for i, p in [(0, 'weight'), (
                    0, 'bias'), (2, 'weight')])
            k += 1
    used.update(_sub(sd, 'backbone.patch_embed.projection', 'patch_embed.proj',
                     out))
    used.update(_sub(sd, f'backbone.norm{len(depths) - 1}', 'norm', out))
    if arch == 'swin':
        used.update(_sub(sd, 'backbone.patch_embed.norm', 'patch_embed.norm',
                         out))
    else:
        used.update(_sub(sd, 'backbone.pos_embed', 'pos_embed', out))
    used.update(_sub(sd, 'backbone.mask_token', 'vis_mask_token', out))
    for old, new in DECODER.items():
        used.update(_sub(sd, f'neck.{new}', old, out))
    used.update(_sub(sd, 'neck.mask_token', 'mask_token', out))
    for i in sorted({int(k.split('.')[2]) for k in sd
                     if k.startswith('neck.decoder_blocks.')}):
        for old, new in TIMM_VIT_BLOCK.items():
            used.update(_sub(sd, f'neck.decoder_blocks.{i}.{new}',
                             f'decoder_blocks.{i}.{old}', out))
    if 'neck.decoder_pos_embed' in sd:
        out['decoder_pos_embed'] = sd['neck.decoder_pos_embed'][:, 1:]
        used.add('neck.decoder_pos_embed')
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f'{len(left)} mmum keys have no official {arch} '
                         f'counterpart: {left[:10]}')
    return out


CONFIGS = dict(  # arch, first width -> released default config
    swin={96: 'configs/um_mae/swin_t_200e.py',
          192: 'configs/um_mae/swin_l_800e.py'},
    pvt={64: 'configs/um_mae/pvt_s_200e.py'})


def released_config(sd: Dict[str, torch.Tensor], arch: str,
                    root: str = '.') -> Tuple[str, dict]:
    """The mmum config whose model the converted ``sd`` fits, and the
    ``--cfg-options`` that differ from it (``{}`` for the released
    recommended models); ``root`` is the repository root.

    Raises:
        ValueError: no mmum config has the encoder width of ``sd``.
    """
    from mmengine.config import Config
    width = sd['backbone.patch_embed.projection.weight'].shape[0]
    if width not in CONFIGS[arch]:
        raise ValueError(
            f'no mmum UM-MAE config for a {arch} with a {width}-channel '
            f'stem; known: {CONFIGS}')
    path = CONFIGS[arch][width]
    model = Config.fromfile(osp.join(root, path)).model
    found = dict(neck=dict(
        decoder_embed_dim=sd['neck.mask_token'].shape[-1],
        decoder_depth=len({k.split('.')[2] for k in sd
                           if k.startswith('neck.decoder_blocks.')})
    )) if 'neck.mask_token' in sd else {}  # encoder-only: no decoder
    if arch == 'swin':
        found['backbone'] = dict(cpb_hidden_dims=sd[
            'backbone.stages.0.blocks.0.attn.w_msa.cpb.mlp.0.weight'].shape[0])
    options = {f'model.{part}.{k}': v
               for part, values in found.items() for k, v in values.items()
               if model[part].get(k) != v}
    return path, options


FINETUNE = dict(swin={96: 'configs/finetune/um_mae_swin_t_100e.py',
                      192: 'configs/finetune/um_mae_swin_l_100e.py'},
                pvt={64: 'configs/finetune/um_mae_pvt_s_100e.py'})


def advice(sd: Dict[str, torch.Tensor], arch: str, dst: str, config: str,
           options: dict) -> str:
    """How to use the converted file, and what it lacks (printed)."""
    width = sd['backbone.patch_embed.projection.weight'].shape[0]
    overrides = ''.join(f' {k}={v}' for k, v in options.items())
    lines, missing = [], []
    if 'neck.mask_token' not in sd:
        missing.append('the decoder (neck.*)')
        lines.append('no decoder in this checkpoint (an encoder-only '
                     'release): wrote the encoder (backbone.*) only.')
    if 'backbone.mask_token' not in sd:
        missing.append('backbone.mask_token')
        lines.append("no vis_mask_token in this checkpoint: "
                     'backbone.mask_token (pre-training only) is not written.')
    lines.append(
        f'fine-tune / transfer: model.backbone.init_cfg=dict('
        f"type='Pretrained', checkpoint='{dst}', prefix='backbone.') "
        f'(e.g. {FINETUNE[arch].get(width, "configs/finetune/")}, mmdet, '
        'mmseg configs).')
    fresh = (f': {" and ".join(missing)} start(s) from the init'
             if missing else '')
    lines.append(
        f'continue pre-training: tools/train.py {config} --cfg-options '
        f"load_from='{dst}'{overrides}{fresh}. It holds weights only: with "
        "the config's resume=True mmum loads them and starts a fresh "
        'schedule (set resume=False to say so).')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official UM-MAE checkpoint (full or '
                        'encoder-only)')
    parser.add_argument('dst', help='mmum checkpoint to write')
    args = parser.parse_args()
    import torch

    from mmum.utils.released import load_released
    sd, arch = official_to_mmum(load_released(args.src)[0])
    root = osp.join(osp.dirname(osp.abspath(__file__)), '..', '..')
    config, options = released_config(sd, arch, root)
    torch.save({'state_dict': sd,
                'meta': dict(source=args.src, converted_from='um_mae_official',
                             arch=arch, config=config)}, args.dst)
    print(f'{arch}: wrote {len(sd)} tensors to {args.dst} (the model of '
          f'{config}' + (' with --cfg-options ' + ' '.join(
              f'{k}={v}' for k, v in options.items()) if options else '')
          + ')')
    print(advice(sd, arch, args.dst, config, options))


if __name__ == '__main__':
    main()

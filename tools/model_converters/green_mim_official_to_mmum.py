"""Import a released GreenMIM (Swin or Twins) checkpoint into mmum or
mmpretrain.

    python tools/model_converters/green_mim_official_to_mmum.py SRC DST
    python tools/model_converters/green_mim_official_to_mmum.py SRC DST \\
        --backbone-only

``SRC``: a checkpoint of the released GreenMIM Swin models (a dict whose
``'model'`` entry, or the dict itself, holds the state dict with
``encoder.`` / decoder keys), or an encoder-only state dict (with or without
the ``encoder.`` prefix, as its ``extract_backbone`` writes). ``DST`` gets
``{'state_dict': ..., 'meta': {...}}``:

- default: an mmum ``GreenMIM`` checkpoint (``backbone.`` / ``neck.`` keys),
  to continue pre-training with ``configs/green_mim/`` (``load_from``); from
  an encoder-only file the ``backbone.`` keys alone, and the script says
  that the decoder is missing;
- ``--backbone-only``: an mmpretrain ``SwinTransformer`` state dict (no
  prefix), for fine-tuning, detection or segmentation.

The script prints what it converted and the model settings the weights need,
and refuses (naming the keys) a checkpoint of another architecture.

A released Twins-L checkpoint (``pos_block`` keys) goes to an mmum
``GreenMIM`` with ``GreenTwins`` (``configs/green_mim/twins_l_800e.py``) or,
with ``--backbone-only``, to an mmpretrain ``SVT`` state dict; its key
mapping is in ``mmum/utils/released_twins.py``.

Layout (``E`` = ``encoder.``, ``s`` stage, ``b`` block, ``i`` decoder block):

=====================================  ======================================
released                               mmpretrain / mmum
=====================================  ======================================
``E patch_embed.proj / .norm``         ``patch_embed.projection / .norm``
``E layers.s.blocks.b.norm1/norm2``    ``stages.s.blocks.b.norm1/norm2``
``E layers.s.blocks.b.attn.qkv/proj``  ``stages.s.blocks.b.attn.w_msa.qkv/
                                       proj``
``E ...attn.relative_position_bias_    ``...attn.w_msa.relative_position_bias_
table``                                table`` (*)
``E ...attn.relative_position_index``  rebuilt for the target window
``E layers.s.blocks.b.mlp.fc1/fc2``    ``...ffn.layers.0.0 / ffn.layers.1``
``E layers.s.downsample.reduction``    ``stages.s.downsample.reduction`` (**)
``E layers.s.downsample.norm``         ``stages.s.downsample.norm`` (**)
``E norm``                             ``norm3`` (last stage's output norm)
``decoder_embed / decoder_pred``       ``neck.decoder_embed / decoder_pred``
``mask_token``                         ``neck.mask_token``
``decoder_pos_embed`` (1, L, D)        ``neck.decoder_pos_embed`` (1, 1+L,
                                       D): a zero class-token row in front;
                                       same (column-first, MAE) table layout
``decoder_blocks.i.norm1/norm2``       ``neck.decoder_blocks.i.ln1/ln2``
``decoder_blocks.i.attn.qkv/proj``     ``neck.decoder_blocks.i.attn.qkv/
                                       proj``
``decoder_blocks.i.mlp.fc1/fc2``       ``neck.decoder_blocks.i.ffn.layers.
                                       0.0 / ffn.layers.1``
``decoder_norm``                       ``neck.ln1``
=====================================  ======================================

(*) The released Swin shrinks the window of a stage whose map is not larger
than the window to the map (window 14 at 224 px: stage 4 runs 7x7 windows,
a 13x13 table). ``--backbone-only`` keeps every table as it is and prints
per-stage window sizes for mmpretrain's ``stage_cfgs``; the mmum
``GreenSwinTransformer`` has one window size, so a smaller table is placed at
the centre of the (2w-1)^2 table (same bias for every offset that occurs;
zeros at offsets no 7x7 map can have).

(**) The released patch merging concatenates each 2x2 cell position-major,
``[x(0,0), x(1,0), x(0,1), x(1,1)]`` (C channels each, Swin's original
order); mmcv's ``PatchMerging`` (``nn.Unfold``) channel-major,
``x[c, (0,0)], x[c, (0,1)], x[c, (1,0)], x[c, (1,1)]`` for every channel
``c``. Column ``4c + k`` of mmpretrain's merge LayerNorm and reduction
weights is released column ``P[k] * C + c`` with ``P = (0, 2, 1, 3)``.
"""
from __future__ import annotations

import argparse
from collections import OrderedDict
from typing import TYPE_CHECKING, Dict, List, Tuple

# torch and mmum are imported where they are used, so that --help answers at
# once
if TYPE_CHECKING:
    import torch

DECODER_KEYS = {'decoder_embed', 'decoder_blocks', 'decoder_norm',
                'decoder_pred', 'decoder_pos_embed', 'mask_token'}
SWIN = 'the checkpoint'  # refuse_leftovers' wording for a released Swin
MERGE_ORDER = (0, 2, 1, 3)  # released block of mmcv's kernel position k


def detect(sd: Dict[str, torch.Tensor]) -> str:
    """The prefix of the released Swin encoder in ``sd`` (``'encoder.'`` in
    a pre-training checkpoint, ``''`` in an extracted backbone)."""
    for prefix in ('encoder.', ''):
        need = [f'{prefix}patch_embed.proj.weight',
                f'{prefix}layers.0.blocks.0.attn.relative_position_bias_table']
        if all(k in sd for k in need):
            return prefix
    tops = sorted({'.'.join(k.split('.')[:2]) for k in sd})
    raise ValueError(
        'not a released GreenMIM Swin checkpoint: expected the keys '
        "'encoder.patch_embed.proj.weight' and "
        "'encoder.layers.0.blocks.0.attn.relative_position_bias_table' "
        f'(or the same without encoder.); found {len(sd)} keys starting '
        f'with {tops[:12]}')


def encoder_arch(sd: Dict[str, torch.Tensor], prefix: str) -> dict:
    """Architecture of the released encoder read from its weights:
    ``embed_dims``, ``depths``, ``num_heads``, ``windows`` (the window each
    stage really uses, from its bias table) and ``patch_size``."""
    depths, heads, windows = [], [], []
    s = 0
    while f'{prefix}layers.{s}.blocks.0.norm1.weight' in sd:
        b = 0
        while f'{prefix}layers.{s}.blocks.{b}.norm1.weight' in sd:
            b += 1
        table = sd[f'{prefix}layers.{s}.blocks.0.attn.'
                   'relative_position_bias_table']
        side = round(table.shape[0]**.5)
        depths.append(b)
        heads.append(table.shape[1])
        windows.append((side + 1) // 2)
        s += 1
    proj = sd[f'{prefix}patch_embed.proj.weight']
    return dict(embed_dims=proj.shape[0], depths=depths, num_heads=heads,
                windows=windows, patch_size=proj.shape[-1])


def merge_columns(channels: int) -> torch.Tensor:
    """Index ``idx`` with ``mmcv_tensor[..., j] = released[..., idx[j]]``
    for the 4C inputs of a patch merging (see the module docstring)."""
    import torch
    c = torch.arange(channels)
    return torch.stack([MERGE_ORDER[k] * channels + c for k in range(4)],
                       1).flatten()  # 4c + k -> P[k] * C + c


def rel_index(window: int) -> torch.Tensor:
    """mmpretrain's ``WindowMSA.relative_position_index`` for a window:
    (w^2, w^2), ``(dr + w - 1) * (2w - 1) + dc + w - 1`` for the offset
    (dr, dc) of token i from token j, both row-major in the window."""
    import torch
    r, c = torch.meshgrid(torch.arange(window), torch.arange(window),
                          indexing='ij')
    r, c = r.flatten(), c.flatten()
    return (r[:, None] - r[None] + window - 1) * (2 * window - 1) + (
        c[:, None] - c[None] + window - 1)


def fit_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """A released ((2v-1)^2, nh) bias table on the (2w-1)^2 grid of a
    window ``w >= v``: same bias for every offset |d| < v, zeros beyond."""
    side, new = round(table.shape[0]**.5), 2 * window - 1
    if side == new:
        return table
    if side > new:
        raise ValueError(f'a bias table for window {(side + 1) // 2} does '
                         f'not fit window_size {window}')
    out = table.new_zeros(new, new, table.shape[1])
    o = (new - side) // 2
    out[o:o + side, o:o + side] = table.view(side, side, -1)
    return out.view(new * new, -1)


def convert_encoder(sd: Dict[str, torch.Tensor], prefix: str,
                    windows: List[int], used: set) -> 'OrderedDict':
    """Released encoder -> mmpretrain ``SwinTransformer`` keys; stage ``s``
    gets bias tables and indices for ``windows[s]``."""
    from mmum.utils.released import TIMM_SWIN_BLOCK
    out = OrderedDict()

    def take(key):
        used.add(prefix + key)
        return sd[prefix + key]

    for p in ('weight', 'bias'):
        out[f'patch_embed.projection.{p}'] = take(f'patch_embed.proj.{p}')
        out[f'patch_embed.norm.{p}'] = take(f'patch_embed.norm.{p}')
    arch = encoder_arch(sd, prefix)
    for s, depth in enumerate(arch['depths']):
        for b in range(depth):
            src, dst = f'layers.{s}.blocks.{b}', f'stages.{s}.blocks.{b}'
            for old, new in TIMM_SWIN_BLOCK.items():
                for p in ('weight', 'bias'):
                    out[f'{dst}.{new}.{p}'] = take(f'{src}.{old}.{p}')
            table = take(f'{src}.attn.relative_position_bias_table')
            out[f'{dst}.attn.w_msa.relative_position_bias_table'] = fit_table(
                table, windows[s])
            if prefix + f'{src}.attn.relative_position_index' in sd:
                used.add(prefix + f'{src}.attn.relative_position_index')
            out[f'{dst}.attn.w_msa.relative_position_index'] = rel_index(
                windows[s])
        ds = f'layers.{s}.downsample'
        if prefix + f'{ds}.reduction.weight' in sd:
            w = take(f'{ds}.reduction.weight')  # 2C, 4C
            idx = merge_columns(w.shape[1] // 4)
            out[f'stages.{s}.downsample.norm.weight'] = take(
                f'{ds}.norm.weight')[idx]
            out[f'stages.{s}.downsample.norm.bias'] = take(
                f'{ds}.norm.bias')[idx]
            out[f'stages.{s}.downsample.reduction.weight'] = w[:, idx]
    last = len(arch['depths']) - 1
    for p in ('weight', 'bias'):
        out[f'norm{last}.{p}'] = take(f'norm.{p}')
    return out


def has_decoder(sd: Dict[str, torch.Tensor]) -> bool:
    """Whether a released state dict holds the pre-training decoder."""
    return any(k.split('.')[0] in DECODER_KEYS for k in sd)


def official_to_swin(sd: Dict[str, torch.Tensor]
                     ) -> Tuple['OrderedDict', dict]:
    """Released state dict (full or encoder-only) -> (mmpretrain
    ``SwinTransformer`` state dict, settings for the model). Each stage
    keeps the window the released model used there. A full pre-training
    checkpoint's decoder is dropped."""
    from mmum.utils.released_twins import LN_EPS, refuse_leftovers
    prefix = detect(sd)
    arch = encoder_arch(sd, prefix)
    used = {k for k in sd if k.split('.')[0] in DECODER_KEYS}  # dropped
    out = convert_encoder(sd, prefix, arch['windows'], used)
    refuse_leftovers(sd, used, 'mmpretrain SwinTransformer', SWIN)
    ln = dict(type='LN', eps=LN_EPS)
    settings = dict(
        type='mmpretrain.SwinTransformer',
        arch={k: arch[k] for k in ('embed_dims', 'depths', 'num_heads')},
        patch_size=arch['patch_size'], window_size=arch['windows'][0],
        norm_cfg=ln, patch_cfg=dict(norm_cfg=ln),
        stage_cfgs=[dict(window_size=w, block_cfgs=dict(norm_cfg=ln),
                         downsample_cfg=dict(norm_cfg=ln))
                    for w in arch['windows']])
    return out, settings


def official_to_mmum(sd: Dict[str, torch.Tensor]
                     ) -> Tuple['OrderedDict', dict]:
    """Released pre-training state dict -> (mmum ``GreenMIM`` state dict,
    settings for the model). The window is stage 1's; smaller tables of
    shrunk windows are centred in it (module docstring, (*)). An
    encoder-only state dict (no ``decoder_*`` / ``mask_token``, with or
    without ``encoder.``) gives the ``backbone.`` keys only, and settings
    without a ``neck``."""
    from mmum.utils.released_twins import (LN_EPS, convert_green_decoder,
                                           refuse_leftovers)
    prefix = detect(sd)
    arch = encoder_arch(sd, prefix)
    window = arch['windows'][0]
    used = set()
    out = OrderedDict(
        ('backbone.' + k, v) for k, v in convert_encoder(
            sd, prefix, [window] * len(arch['depths']), used).items())
    ln = dict(type='LN', eps=LN_EPS)
    backbone = dict(
        type='mmum.GreenSwinTransformer',
        arch={k: arch[k] for k in ('embed_dims', 'depths', 'num_heads')},
        patch_size=arch['patch_size'], window_size=window, norm_cfg=ln)
    if not has_decoder(sd):
        refuse_leftovers(sd, used, 'mmum GreenMIM', SWIN)
        return out, dict(type='mmum.GreenMIM', backbone=backbone)
    decoder, neck, unit = convert_green_decoder(sd, used)
    out.update(decoder)
    refuse_leftovers(sd, used, 'mmum GreenMIM', SWIN)
    settings = dict(type='mmum.GreenMIM', mask_unit=unit, backbone=backbone,
                    neck=neck, head=dict(patch_size=unit))
    return out, settings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='released GreenMIM checkpoint')
    parser.add_argument('dst', help='checkpoint to write')
    parser.add_argument('--backbone-only', action='store_true',
                        help='write an mmpretrain SwinTransformer state dict '
                        'instead of an mmum GreenMIM one')
    args = parser.parse_args()
    from mmum.utils.released import load_released
    from mmum.utils.released_twins import twins_prefix
    sd, _ = load_released(args.src)
    if twins_prefix(sd) is not None:
        return convert_twins(args, sd)
    if args.backbone_only:
        out, settings = official_to_swin(sd)
        target, load = ('mmpretrain SwinTransformer',
                        f"model.backbone.init_cfg=dict(type='Pretrained', "
                        f"checkpoint='{args.dst}') (e.g. in "
                        'configs/finetune/green_mim_swin_b_100e.py)')
    else:
        out, settings = official_to_mmum(sd)
        target, load = 'mmum GreenMIM', (
            f"load_from='{args.dst}' in configs/green_mim/ (weights only: "
            "with the configs' resume=True mmum loads them and starts a "
            'fresh schedule; set resume=False to say so)')
        if not has_decoder(sd):
            target = 'mmum GreenMIM backbone'
            print('no decoder in this checkpoint (an encoder-only state '
                  'dict): wrote the encoder (backbone.*) only; continuing '
                  'pre-training starts the decoder from its init. To '
                  'fine-tune or transfer, convert with --backbone-only.')
    write(args, sd, out, 'green_mim_official', target,
          summary(sd, args.backbone_only), settings, load)


def convert_twins(args, sd: Dict[str, torch.Tensor]) -> None:
    """The CLI for a released Twins checkpoint (``released_twins.py``)."""
    from mmum.utils.released_twins import (model_settings,
                                           official_twins_to_mmum,
                                           official_twins_to_svt,
                                           twins_summary)
    if args.backbone_only:
        out, arch = official_twins_to_svt(sd)
        settings = model_settings(arch, 'mmpretrain.SVT')
        target = 'mmpretrain SVT (no prefix)'
        load = f"init_cfg=dict(type='Pretrained', checkpoint='{args.dst}')"
    else:
        out, settings = official_twins_to_mmum(sd)
        target = 'mmum GreenMIM (GreenTwins)'
        load = (f"load_from='{args.dst}' with "
                'configs/green_mim/twins_l_800e.py')
    write(args, sd, out, 'green_mim_official_twins', target,
          twins_summary(sd, args.backbone_only), settings, load)


def write(args, sd, out, converted_from: str, target: str,
          lines: List[str], settings: dict, load: str) -> None:
    """Save ``out`` to ``args.dst`` and say what was written, what each
    part became (``lines``), the model settings and how to load it."""
    import torch
    torch.save({'state_dict': out,
                'meta': dict(source=args.src, converted_from=converted_from,
                             target=target)}, args.dst)
    print(f'wrote {args.dst}: {len(out)} {target} tensors from {len(sd)} '
          'released ones')
    for line in lines:
        print('  ' + line)
    print(f'the model needs\n  {settings}\nload it with {load}')


def summary(sd: Dict[str, torch.Tensor], backbone_only: bool) -> List[str]:
    """What the conversion did, one line per part."""
    from mmum.utils.released_twins import LN_EPS
    prefix = detect(sd)
    arch = encoder_arch(sd, prefix)
    w = arch['windows']
    lines = [
        f"encoder: Swin embed_dims {arch['embed_dims']}, depths "
        f"{arch['depths']}, heads {arch['num_heads']}, patch "
        f"{arch['patch_size']}; LayerNorm eps {LN_EPS} everywhere",
        f'{len(w) - 1} patch mergings: reduction input columns and merge '
        'LayerNorm permuted from the released position-major order to '
        "mmcv's channel-major (nn.Unfold) order"]
    if backbone_only:
        lines.append(f'windows per stage {w} kept (bias tables as released, '
                     'relative_position_index rebuilt); only the final norm '
                     '(norm3) exists in the release: other out_indices '
                     'norms start from their init; decoder dropped')
    else:
        shrunk = [s for s, v in enumerate(w) if v < w[0]]
        lines.append(f'window {w[0]} for every stage' + ''.join(
            f'; stages.{s} ran window {w[s]}: its tables centred in the '
            f'{2 * w[0] - 1}x{2 * w[0] - 1} table' for s in shrunk))
        depth = len({k.split('.')[1] for k in sd
                     if k.startswith('decoder_blocks.')})
        lines.append(f'decoder: {depth} block(s), position table copied '
                     '(same column-first layout) with a zero class-token row '
                     'in front' if has_decoder(sd) else
                     'decoder: none in this checkpoint (not written)')
    return lines


if __name__ == '__main__':
    main()

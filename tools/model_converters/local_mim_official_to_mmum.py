"""Import a released LocalMIM / ViTFreeze ViT checkpoint into mmum's LocalMIM.

    python tools/model_converters/local_mim_official_to_mmum.py SRC DST

``SRC`` is a pre-training checkpoint of the released LocalMIM or ViTFreeze
code (a dict whose ``'model'`` entry, or the dict itself, holds the flat
state dict of ``MaskedAutoencoderViT``), or its encoder alone (no
``decoder.*`` / ``norm.{j}``; a fine-tuned classifier's ``head`` /
``fc_norm`` are dropped), which gives the ``backbone.`` keys only; ``DST`` gets
``{'state_dict': ..., 'meta': {...}}`` with the keys of ``mmum.LocalMIM`` +
``mmum.LocalMIMViT`` + ``mmum.LocalMIMDecoder``, loadable by
``configs/vitfreeze/local_mim_vit_b_100e.py`` / ``vit_b_100e.py`` (ViT-B) or,
with ``prefix='backbone.'``, by an mmpretrain ``VisionTransformer``. The
script prints what it converted and the model settings the weights need.

=================================  ==========================================
released                           mmum
=================================  ==========================================
``cls_token``, ``pos_embed``       ``backbone.cls_token``, ``.pos_embed``
``patch_embed.proj.*``             ``backbone.patch_embed.projection.*``
``blocks.{i}.norm1/norm2``         ``backbone.layers.{i}.ln1/ln2``
``blocks.{i}.attn.qkv/proj``       ``backbone.layers.{i}.attn.qkv/proj``
``blocks.{i}.mlp.fc1/fc2``         ``backbone.layers.{i}.ffn.layers.0.0/
                                   ffn.layers.1``
``norm.{j}`` (decoder input)       ``neck.{k}.norm_in``
``decoder.{j}.embed/mask_token``   ``neck.{k}.embed/mask_token``
``decoder.{j}.blocks.0.*``         ``neck.{k}.block.*`` (as the encoder block)
``decoder.{j}.norm``               ``neck.{k}.norm``
``decoder.{j}.pred.{m}``, m < last ``neck.{k}.resize.{m}`` (transposed convs,
                                   LayerNorm2d; GELU / pooling have none)
``decoder.{j}.pred.{last}``        ``neck.{k}.pred`` (1x1 convolution)
``decoder.{j}.pos_embed``          checked, dropped (mmum builds the same
                                   fixed table)
``hog_enc.{j}.conv.weight``        checked, dropped (the fixed Sobel kernel)
=================================  ==========================================

Decoders pruned by the released FreezeOut code are deleted from the front of
its module lists, so a checkpoint saved after the 56² decoder was pruned
numbers the remaining ones from 0: decoder ``j`` of ``n`` present is mmum
decoder ``k = 4 - n + j``. Its scale is read from its head and must match.
Pruned decoders are absent from ``DST`` (``meta['pruned_decoders']`` lists
them; a load gives them fresh weights).

Raises ``ValueError`` naming the keys for a checkpoint of another
architecture (e.g. MAE, GreenMIM, UM-MAE), for keys without an mmum
counterpart, and for a HOG kernel or decoder position table that is not the
released one.
"""
from __future__ import annotations

import argparse
import math
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Dict, List, Tuple

# torch and mmum are imported where they are used, so that --help answers at
# once
if TYPE_CHECKING:
    import torch

# the released decoders of the 4 scales, by mmum index: grid -> target
# upsampling, and which ``pred.{m}`` entries hold parameters
SCALES = (4., 2., 1., .5)
HEAD_KEYS = {4.: (0, 1, 3, 4), 2.: (0, 1), 1.: (0, ), .5: (1, )}
# (embed_dims, depth) -> mmpretrain arch of the released models
ARCHS = {(384, 12): 'deit-small', (768, 12): 'b', (1024, 24): 'l',
         (1280, 32): 'h'}
REQUIRED = ('cls_token', 'pos_embed', 'patch_embed.proj.weight',
            'blocks.0.attn.qkv.weight')
# a fine-tuned classifier's parts (MAE-style fine-tuning): not written
CLASSIFIER = ('head', 'fc_norm')


def check_layout(sd: Dict[str, torch.Tensor]) -> None:
    missing = [k for k in REQUIRED if k not in sd]
    if missing:
        tops = sorted({re.sub(r'\.\d+\..*', '', k) for k in sd})
        raise ValueError(
            'not a released LocalMIM / ViTFreeze ViT checkpoint: missing '
            f'{missing}; found the names {tops[:16]}')


def _sub(sd, old, new, out) -> List[str]:
    """Copy every ``old.*`` tensor to ``new.*``; returns the keys used."""
    used = [k for k in sd if k == old or k.startswith(old + '.')]
    for k in used:
        out[new + k[len(old):]] = sd[k]
    return used


def _indices(sd, prefix: str) -> List[int]:
    return sorted({int(k.split('.')[1]) for k in sd
                   if re.match(re.escape(prefix) + r'\.\d+\.', k)})


def official_to_mmum(sd: Dict[str, torch.Tensor]
                     ) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Released flat state dict -> (mmum state dict, info) where info has
    ``arch``, ``patch_size``, ``img_size``, ``out_indices``,
    ``decoder_dims`` (``None`` without decoders), ``pruned_decoders`` and
    ``dropped`` (names of a fine-tuned classifier's head / final norm).

    An encoder-only state dict (no ``decoder.*`` / ``norm.{j}``) gives the
    ``backbone.`` keys alone; a fine-tuned one also has its ``head`` /
    ``fc_norm`` (or a final ``norm``) dropped, as LocalMIM's encoder has
    neither."""
    import torch

    from mmum.models.necks.local_mim_decoder import released_sincos
    from mmum.utils.released import TIMM_VIT_BLOCK
    check_layout(sd)
    out = OrderedDict()
    dropped = sorted({k.split('.')[0] for k in sd
                      if k.split('.')[0] in CLASSIFIER
                      or re.fullmatch(r'norm\.(weight|bias)', k)})
    used = {k for k in sd if k.split('.')[0] in CLASSIFIER
            or re.fullmatch(r'norm\.(weight|bias)', k)}
    blocks = _indices(sd, 'blocks')
    if blocks != list(range(len(blocks))):
        raise ValueError(f'block indices are not 0..{len(blocks) - 1}: '
                         f'{blocks}')
    depth, (dims, _, patch, _) = len(blocks), sd[
        'patch_embed.proj.weight'].shape
    grid = math.isqrt(sd['pos_embed'].shape[1] - 1)
    for old, new in [('cls_token', 'backbone.cls_token'),
                     ('pos_embed', 'backbone.pos_embed'),
                     ('patch_embed.proj', 'backbone.patch_embed.projection')]:
        used.update(_sub(sd, old, new, out))
    for i in blocks:
        for old, new in TIMM_VIT_BLOCK.items():
            used.update(_sub(sd, f'blocks.{i}.{old}',
                             f'backbone.layers.{i}.{new}', out))

    decoders = _indices(sd, 'decoder')
    n = len(decoders)
    if decoders != list(range(n)) or n > len(SCALES) or _indices(
            sd, 'norm') != decoders:
        raise ValueError(
            f'expected decoder.0..{n - 1} (at most {len(SCALES)}: the '
            'regular LocalMIM stages; all_stages is not supported) and as '
            f'many norm.*; found decoder {decoders}, norm '
            f'{_indices(sd, "norm")}')
    sobel = torch.tensor([[1., 0., -1.], [2., 0., -2.], [1., 0., -1.]])
    sobel = torch.stack([sobel, sobel.t()])[:, None]
    for j in decoders:
        k = len(SCALES) - n + j
        src, dst = f'decoder.{j}', f'neck.{k}'
        head = sorted({int(key.split('.')[3]) for key in sd
                       if key.startswith(f'{src}.pred.')})
        if tuple(head) != HEAD_KEYS[SCALES[k]]:
            raise ValueError(
                f'{src} is mmum decoder {k} ({n} of {len(SCALES)} decoders '
                f'left), whose released head has parameters in pred.'
                f'{HEAD_KEYS[SCALES[k]]}; found pred.{tuple(head)}')
        used.update(_sub(sd, f'norm.{j}', f'{dst}.norm_in', out))
        for name in ('embed', 'mask_token', 'norm'):
            used.update(_sub(sd, f'{src}.{name}', f'{dst}.{name}', out))
        for old, new in TIMM_VIT_BLOCK.items():
            used.update(_sub(sd, f'{src}.blocks.0.{old}',
                             f'{dst}.block.{new}', out))
        for m in head[:-1]:
            used.update(_sub(sd, f'{src}.pred.{m}', f'{dst}.resize.{m}', out))
        used.update(_sub(sd, f'{src}.pred.{head[-1]}', f'{dst}.pred', out))
        pos = sd.get(f'{src}.pos_embed')
        if pos is not None:
            ref = released_sincos((grid, grid), pos.shape[-1])
            if pos.shape != ref.shape or not torch.allclose(
                    pos.float(), ref, atol=1e-6):
                raise ValueError(f'{src}.pos_embed is not the fixed sin-cos '
                                 'table of the released decoder')
            used.add(f'{src}.pos_embed')
        w = sd.get(f'hog_enc.{j}.conv.weight')
        if w is not None:
            if not torch.equal(w.float(), sobel):
                raise ValueError(f'hog_enc.{j}.conv.weight is not the '
                                 'released Sobel kernel')
            used.add(f'hog_enc.{j}.conv.weight')
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f'{len(left)} keys of the released checkpoint have '
                         f'no mmum counterpart: {left[:10]}')
    # the released ViTs by name; otherwise the shapes (heads are not in a
    # state dict: set num_heads yourself)
    arch = ARCHS.get((dims, depth)) or dict(
        embed_dims=dims, num_layers=depth, num_heads='?',
        feedforward_channels=sd['blocks.0.mlp.fc1.weight'].shape[0])
    info = dict(arch=arch, patch_size=patch,
                img_size=grid * patch,
                out_indices=(1, 3, depth - 3, depth - 1),
                decoder_dims=sd['decoder.0.embed.weight'].shape[0]
                if n else None,
                pruned_decoders=list(range(len(SCALES) - n)) if n else [],
                dropped=dropped)
    return out, info


def mmum_settings(info: dict) -> dict:
    """Model settings the imported weights need (printed as a hint)."""
    return dict(
        backbone=dict(type='mmum.LocalMIMViT', arch=info['arch'],
                      patch_size=info['patch_size'],
                      img_size=info['img_size'],
                      out_indices=info['out_indices']),
        neck=dict(type='mmum.LocalMIMDecoder',
                  embed_dims=info['decoder_dims'], num_heads=8)
        if info['decoder_dims'] else '(no decoders in the file)')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='released LocalMIM / ViTFreeze checkpoint')
    parser.add_argument('dst', help='mmum checkpoint to write')
    args = parser.parse_args(argv)
    import torch

    from mmum.utils.released import load_released
    sd, extra = load_released(args.src)
    out, info = official_to_mmum(sd)
    meta = dict(source=args.src, converted_from='local_mim_official',
                pruned_decoders=info['pruned_decoders'])
    if 'epoch' in extra:
        meta['official_epoch'] = int(extra['epoch'])
    torch.save({'state_dict': out, 'meta': meta}, args.dst)
    necks = sorted({k.split('.')[1] for k in out if k.startswith('neck.')})
    print(f'ViT {info["arch"]}/{info["patch_size"]} at {info["img_size"]} '
          f'px: {len(sd)} released tensors -> {len(out)} mmum tensors '
          f'(backbone {sum(k.startswith("backbone.") for k in out)}, '
          f'decoders {necks})')
    if info['pruned_decoders']:
        print(f'decoders {info["pruned_decoders"]} were pruned by FreezeOut '
              'in the released run: absent, fresh on load')
    if info['decoder_dims'] is None:
        print('no decoders in this checkpoint (an encoder-only state dict): '
              'wrote the encoder (backbone.*) only; continuing pre-training '
              'starts the decoders from their init')
    if info['dropped']:
        print(f'a fine-tuned classifier: {info["dropped"]} not written '
              "(LocalMIM's encoder has no final norm or head)")
    print(f'wrote {args.dst}; the model needs\n  {mmum_settings(info)}')
    print(f"fine-tune / transfer: model.backbone.init_cfg=dict(type="
          f"'Pretrained', checkpoint='{args.dst}', prefix='backbone.'); "
          f"continue pre-training: load_from='{args.dst}' in "
          "configs/vitfreeze/ (weights only: with the configs' resume=True "
          'mmum loads them and starts a fresh schedule; set resume=False to '
          'say so)')


if __name__ == '__main__':
    main()

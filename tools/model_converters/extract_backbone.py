"""Extract the backbone of a pre-training checkpoint.

    python tools/model_converters/extract_backbone.py SRC DST [--keep-mask-token]

``SRC`` is a checkpoint of an mmum / mmpretrain self-supervised algorithm
(``state_dict`` with ``backbone.``, ``neck.``, ``head.`` keys). ``DST`` gets
``{'state_dict': <backbone keys without the prefix>, 'meta': ...}``, which a
fine-tuning backbone loads with ``init_cfg=dict(type='Pretrained',
checkpoint=DST)`` (no prefix). The pre-training-only ``mask_token`` is
dropped unless ``--keep-mask-token``. (Configs can also load the whole
checkpoint directly with ``prefix='backbone.'``; this tool makes the file
small and toolbox-neutral.)
"""
import argparse
from collections import OrderedDict

# torch and mmum are imported in main(), after the arguments are parsed, so
# that --help answers at once

PREFIX = 'backbone.'


def extract_backbone(ckpt, keep_mask_token: bool = False) -> OrderedDict:
    """Backbone state dict (prefix stripped) of a loaded checkpoint."""
    sd = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise ValueError('not a checkpoint: expected a dict with a '
                         f"'state_dict', got {type(ckpt).__name__}")
    out = OrderedDict(
        (k[len(PREFIX):], v) for k, v in sd.items() if k.startswith(PREFIX))
    if not out:
        tops = sorted({k.split('.')[0] for k in sd})
        raise ValueError(
            f"no '{PREFIX}' keys: not a pre-training checkpoint of an "
            f'algorithm with a backbone (found top-level names {tops[:10]}). '
            'Official UM-MAE releases go through '
            'um_mae_official_to_mmum.py first.')
    if not keep_mask_token:
        out.pop('mask_token', None)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--keep-mask-token', action='store_true')
    args = parser.parse_args()
    import torch

    from mmum.engine.checkpoint import read_checkpoint
    ckpt = read_checkpoint(args.src, map_location='cpu', weights_only=False)
    sd = extract_backbone(ckpt, args.keep_mask_token)
    meta = dict(ckpt.get('meta') or {}) if isinstance(ckpt, dict) else {}
    meta['extracted_from'] = args.src
    torch.save({'state_dict': sd, 'meta': meta}, args.dst)
    print(f'wrote {len(sd)} backbone tensors to {args.dst} (weights only); '
          "load them with model.backbone.init_cfg=dict(type='Pretrained', "
          f"checkpoint='{args.dst}') (no prefix)")


if __name__ == '__main__':
    main()

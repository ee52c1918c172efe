"""Key policy for loading pre-training weights into fine-tuning backbones.

A fine-tuning backbone loads a pre-training checkpoint with
``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
mmengine loads non-strictly, so a wrong checkpoint would silently leave the
backbone random. :func:`check_pretrained_keys` (called from the backbone's
``_load_from_state_dict``) makes the expected differences silent and every
other difference an error:

- ``mask_token`` of the pre-training encoder is dropped when the model has
  none, and may be missing (an encoder-only release without it: the
  pre-training model keeps its initial token);
- output norms ``norm{i}`` may be missing or extra (fine-tuning picks its
  own ``out_indices``);
- anything else missing, unexpected or of another shape raises a
  ``ValueError`` naming the keys.
"""
import re

PRETRAIN_ONLY = ('mask_token', )
OPTIONAL = re.compile(r'norm\d+\.')


def check_pretrained_keys(module, state_dict: dict, prefix: str) -> None:
    """Check (and trim) the part of ``state_dict`` under ``prefix`` meant
    for ``module``; does nothing when no key has that prefix."""
    for name in PRETRAIN_ONLY:
        if not hasattr(module, name):
            state_dict.pop(prefix + name, None)
    theirs = {
        k[len(prefix):]: v
        for k, v in state_dict.items() if k.startswith(prefix)
    }
    if not theirs:
        return
    own = module.state_dict()
    missing = [k for k in own if k not in theirs and not OPTIONAL.match(k)
               and k not in PRETRAIN_ONLY]
    unexpected = [
        k for k in theirs if k not in own and not OPTIONAL.match(k)
    ]
    shapes = [
        f'{k}: checkpoint {tuple(theirs[k].shape)} vs model '
        f'{tuple(own[k].shape)}' for k in own
        if k in theirs and hasattr(theirs[k], 'shape')
        and theirs[k].shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return

    def show(keys, n=6):
        more = f' ... ({len(keys) - n} more)' if len(keys) > n else ''
        return ', '.join(keys[:n]) + more

    problems = []
    if missing:
        problems.append(f'missing {len(missing)} keys: {show(missing)}')
    if unexpected:
        problems.append(
            f'unexpected {len(unexpected)} keys: {show(unexpected)}')
    if shapes:
        problems.append(f'{len(shapes)} shape mismatches: {show(shapes, 3)}')
    hint = ''
    if unexpected and all(k.split('.')[0] in ('backbone', 'neck', 'head',
                                              'data_preprocessor')
                          for k in unexpected):
        hint = (" The checkpoint holds a whole algorithm: load it with "
                "prefix='backbone.'.")
    raise ValueError(
        f'{type(module).__name__} cannot load this checkpoint'
        f'{" (prefix " + repr(prefix) + ")" if prefix else ""}: it is from '
        f'another architecture or configuration; ' + '; '.join(problems) +
        '.' + hint)

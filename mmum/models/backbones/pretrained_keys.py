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
  ``ValueError`` naming the keys (and, for a Swin with a bias table given to
  a Swin with a bias MLP or back, saying so).

:func:`upgrade_old_swin_keys` converts the key names of old (v1 / v2,
mmcls 0.x) ``SwinTransformer`` checkpoints for *every* subclass of
mmpretrain's ``SwinTransformer`` (mmpretrain converts them for its own class
only and leaves a subclass's final norm at its initial values). It is
installed into ``SwinTransformer._load_from_state_dict`` by :func:`apply`
(``import mmum``) and called by :class:`CPBSwinTransformer` before its key
check.
"""
import re

from mmengine.logging import print_log

PRETRAIN_ONLY = ('mask_token', )
OPTIONAL = re.compile(r'norm\d+\.')


def upgrade_old_swin_keys(module, state_dict: dict, prefix: str) -> None:
    """Rename the keys of an old-layout Swin checkpoint under ``prefix`` in
    place, as mmpretrain's ``SwinTransformer`` does for its exact class:

    - v1 (mmcls 0.x): the final norm ``norm.*`` -> ``norm{last stage}.*``;
    - v1 / v2: the shifted windows' ``attn_mask`` buffers (rebuilt by the
      model, not parameters) are dropped.

    Content-based (a state dict without ``_metadata`` has no version): does
    nothing for keys in the current layout, so running it twice is safe.
    """
    last = len(module.stages) - 1
    renamed = []
    if not hasattr(module, 'norm'):
        for name in ('weight', 'bias'):
            old = f'{prefix}norm.{name}'
            new = f'{prefix}norm{last}.{name}'
            if old in state_dict and new not in state_dict:
                state_dict[new] = state_dict.pop(old)
                renamed.append(name)
    masks = [k for k in state_dict if k.startswith(prefix + 'stages.')
             and k.endswith('.attn_mask')]
    for k in masks:
        del state_dict[k]
    if renamed or masks:
        print_log(
            f'{type(module).__name__}: old-layout (v1 / mmcls 0.x) Swin keys'
            ' converted: ' + ', '.join(
                ([f'{prefix}norm.* -> {prefix}norm{last}.*'] if renamed else
                 []) + ([f'{len(masks)} attn_mask buffers dropped (rebuilt)']
                        if masks else [])), logger='current')


def _swin_family_hint(missing, unexpected) -> str:
    """Why a Swin checkpoint of the other attention family does not fit."""
    table = [k for k in unexpected if 'relative_position_bias_table' in k]
    mlp = [k for k in missing if '.cpb.' in k]
    if table and mlp:
        return (' It is a Swin with relative-position bias tables (mmpretrain'
                ' / mmcls SwinTransformer, GreenMIM) and this model has the '
                "log-spaced bias MLP (UM-MAE's CPB Swin): no key conversion "
                'maps one onto the other. Load it into mmpretrain.'
                'SwinTransformer or mmum.GreenSwinTransformer, or use a '
                'UM-MAE checkpoint (tools/model_converters/'
                'um_mae_official_to_mmum.py).')
    if [k for k in unexpected if '.cpb.' in k] and [
            k for k in missing if 'relative_position_bias_table' in k]:
        return (' It is a CPB Swin (UM-MAE, bias MLP) and this model has '
                'relative-position bias tables: use mmum.CPBSwinTransformer '
                'for it.')
    return ''


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
    hint = _swin_family_hint(missing, unexpected)
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


_APPLIED = []


def apply() -> None:
    """Make mmpretrain's ``SwinTransformer._load_from_state_dict`` convert
    old-layout keys for subclasses too (idempotent)."""
    if _APPLIED:
        return
    from mmpretrain.models import SwinTransformer
    original = SwinTransformer._load_from_state_dict

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              *args, **kwargs):
        if type(self) is not SwinTransformer:  # its own does it
            upgrade_old_swin_keys(self, state_dict, prefix)
        return original(self, state_dict, prefix, local_metadata, *args,
                        **kwargs)

    SwinTransformer._load_from_state_dict = _load_from_state_dict
    _APPLIED.append(True)


apply()

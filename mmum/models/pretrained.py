"""``Pretrained`` weights that fit, or a clear error.

mmengine's ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``
loads with ``strict=False``: a checkpoint of another architecture only logs
"do not match exactly" and leaves the weights it does not hold at their
random initialisation, and a backbone-only file given with
``prefix='backbone.'`` fails with a bare ``AssertionError``.
:class:`StrictPretrainedInit` is mmum's version of that initialiser, in the
``mmum`` scope under the same name, so everything that treats a
``type='Pretrained'`` init specially (it runs after the children's own
init; Swin / PVT skip their random init) keeps doing so::

    init_cfg=dict(type='Pretrained', _scope_='mmum', checkpoint=...,
                  prefix='backbone.')

mmum's fine-tuning backbones (:class:`CPBSwinTransformer`, :class:`PVT` and
their subclasses) switch a plain ``type='Pretrained'`` to it by themselves
(:func:`use_strict_pretrained`); mmum's downstream configs with an
mmpretrain backbone set ``_scope_='mmum'``.
"""
import re
from typing import Dict, List, Tuple

from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from mmengine.runner.checkpoint import _load_checkpoint

from mmum.registry import WEIGHT_INITIALIZERS

# differences that fine-tuning brings by design
OUTPUT_NORM = re.compile(r'(.*\.)?norm\d+\.')  # out_indices differ
PRETRAIN_ONLY = re.compile(r'mask_token$')  # pre-training encoders only
# fixed tables a backbone builds from its settings (mmpretrain's Swin even
# deletes relative_position_index from the state dict to rebuild it)
DERIVED_BUFFER = re.compile(r'(.*\.)?(relative_position_index|pos_embed)$')
WHOLE_MODEL = ('backbone', 'neck', 'head', 'decode_head', 'auxiliary_head',
               'data_preprocessor', 'target_generator', 'roi_head',
               'rpn_head', 'bbox_head')


def use_strict_pretrained(init_cfg):
    """``init_cfg`` with each ``type='Pretrained'`` entry given
    ``_scope_='mmum'`` (unless it has one), i.e.
    :class:`StrictPretrainedInit`."""
    cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    for cfg in cfgs:
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            cfg.setdefault('_scope_', 'mmum')
    return init_cfg


def _load_collecting(module, state_dict: dict
                     ) -> Tuple[List[str], List[str], List[str]]:
    """Load ``state_dict`` into ``module`` like ``load_state_dict`` with
    ``strict=False`` (pre-hooks included, e.g. Swin's bias-table resize),
    returning the missing keys, the unexpected keys and the shape
    mismatches instead of logging them."""
    missing, unexpected, errors = [], [], []

    def load(m, local, prefix=''):
        m._load_from_state_dict(local, prefix, {}, True, missing, unexpected,
                                errors)
        for name, child in m._modules.items():
            if child is not None:
                p = prefix + name + '.'
                load(child, {k: v for k, v in local.items()
                             if k.startswith(p)}, p)

    load(module, dict(state_dict))
    shapes = [m.group(1) + m.group(2) for e in errors
              for m in [re.search(r'size mismatch for (\S+): (.*)', e)] if m]
    other = [e for e in errors if 'size mismatch for' not in e]
    if other:
        raise RuntimeError('; '.join(other))
    return missing, unexpected, shapes


@WEIGHT_INITIALIZERS.register_module(name='Pretrained')
class StrictPretrainedInit(PretrainedInit):
    """mmengine's ``Pretrained`` init that refuses what mmengine only warns
    about.

    - ``prefix`` given but no key of the file starts with it, while the
      file's keys are the module's own (a backbone-only file, as
      ``tools/model_converters/extract_backbone.py`` writes): the keys are
      loaded as they are, and the log says so. If they are neither, a
      ``ValueError`` names the file, the prefix and the prefixes the file
      has.
    - Weights of the module left uninitialised (missing keys), keys the
      module does not have, or tensors of another shape raise a
      ``ValueError`` naming the file and the keys -- except what
      fine-tuning changes by design: output norms ``norm{i}`` (other
      ``out_indices``), a pre-training ``mask_token``, and fixed tables the
      module builds itself (``relative_position_index``, a sin-cos
      ``pos_embed``).

    Args:
        checkpoint (str): File or URL.
        prefix (str, optional): Part of the file's keys before the module's
            own names, e.g. ``'backbone.'``.
        map_location (str): Defaults to ``'cpu'``.
    """

    def __call__(self, module):
        ckpt = _load_checkpoint(self.checkpoint,
                                map_location=self.map_location)
        state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) \
            else ckpt
        state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
        name = type(module).__name__
        state = self._select(module, state, name)
        try:
            missing, unexpected, shapes = _load_collecting(module, state)
        except ValueError as e:  # mmum backbones check keys themselves
            raise ValueError(f'{self.checkpoint}: {e}') from e
        params = dict(module.named_parameters())
        missing = [k for k in missing if not OUTPUT_NORM.match(k) and (
            k in params or not DERIVED_BUFFER.match(k))
            and 'num_batches_tracked' not in k]
        unexpected = [k for k in unexpected if not (
            OUTPUT_NORM.match(k) or PRETRAIN_ONLY.match(k))]
        if missing or unexpected or shapes:
            raise ValueError(self._mismatch(name, missing, unexpected, shapes))
        print_log(f'{name}: loaded {len(state)} tensors from '
                  f'{self.checkpoint}' + (f' (prefix {self.prefix!r})'
                                          if self.prefix else ''),
                  logger='current')
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _select(self, module, state: Dict, name: str) -> Dict:
        """The part of ``state`` for ``module``: under ``self.prefix``, or
        all of it for a backbone-only file."""
        if not self.prefix:
            return state
        prefix = self.prefix if self.prefix.endswith('.') else \
            self.prefix + '.'
        sub = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix)}
        if sub:
            return sub
        tops = sorted({k.split('.')[0] for k in state})
        own = {k.split('.')[0] for k in module.state_dict()}
        if own & set(tops) and not set(tops) & set(WHOLE_MODEL):
            print_log(
                f'{name}: no key of {self.checkpoint} starts with '
                f'{prefix!r}; it holds the backbone alone (keys '
                f'{", ".join(tops[:4])}, ...), which match {name} without '
                'the prefix: loading them as they are (prefix=None says so '
                'in the config).', logger='current')
            return state
        raise ValueError(
            f'{name}: no key of {self.checkpoint} starts with prefix '
            f'{prefix!r}, and its keys are not {name}\'s own either; its keys '
            f'start with {", ".join(repr(t + ".") for t in tops[:6])}. Set '
            "init_cfg.prefix to the part before the backbone's names "
            "(prefix='backbone.' for a whole model, prefix=None for a "
            'backbone-only file) or use a checkpoint of this backbone.')

    def _mismatch(self, name, missing, unexpected, shapes) -> str:

        def show(keys, n=6):
            more = f' ... ({len(keys) - n} more)' if len(keys) > n else ''
            return ', '.join(keys[:n]) + more

        parts = []
        if missing:
            parts.append(f'missing {len(missing)} keys (the model\'s weights '
                         f'they would leave random): {show(missing)}')
        if unexpected:
            parts.append(f'unexpected {len(unexpected)} keys: '
                         f'{show(unexpected)}')
        if shapes:
            parts.append(f'{len(shapes)} shape mismatches: {show(shapes, 3)}')
        return (f'{name} cannot load {self.checkpoint}'
                + (f' (prefix {self.prefix!r})' if self.prefix else '')
                + ': it is a checkpoint of another architecture or '
                'configuration; ' + '; '.join(parts) + '. Use a checkpoint of '
                f'this {name} (tools/model_converters/ convert other '
                'layouts).')

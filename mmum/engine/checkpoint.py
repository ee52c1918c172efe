"""Clear errors when a checkpoint cannot be used.

* :func:`load_from_local` replaces mmengine's loader of local files (through
  ``CheckpointLoader.register_scheme``, mmengine's extension point; applied
  by ``import mmum``): a truncated or non-checkpoint file raises a
  ``RuntimeError`` that names the file and what to do, instead of torch's
  "PytorchStreamReader failed reading zip archive".
* :func:`check_resume_compatible` (called by ``mmum.SafeCheckpointHook``
  when resuming) rejects a checkpoint written by another architecture before
  its weights are half-loaded with ``strict=False``.
"""
import os.path as osp
import pickle

import torch
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.runner.checkpoint import load_from_local as _mmengine_load


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location):
    """mmengine's local loader; unreadable files name themselves."""
    try:
        return _mmengine_load(filename, map_location)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        if 'weights_only' in str(e) or 'Weights only' in str(e):
            raise  # torch's own message explains the allow-list
        size = osp.getsize(osp.expanduser(filename))
        raise RuntimeError(
            f'cannot read checkpoint {filename!r} ({size} bytes): '
            f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
            f'. A checkpoint must be a complete file written by torch.save; '
            f'this one is truncated or not a checkpoint (a save that was '
            f'killed?). Resume from an earlier checkpoint of the work dir '
            f'instead.') from e


def check_resume_compatible(model: torch.nn.Module, checkpoint: dict,
                            source: str = 'the checkpoint') -> None:
    """Raise ``ValueError`` if ``checkpoint['state_dict']`` does not hold
    exactly ``model``'s parameters and buffers with the same shapes."""
    saved = checkpoint.get('state_dict')
    if saved is None:
        raise ValueError(f'{source} has no `state_dict`: resuming needs a '
                         f'checkpoint written by the training Runner')
    own = model.state_dict()
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = [f'{k}: {tuple(saved[k].shape)} vs {tuple(own[k].shape)}'
              for k in own if k in saved and hasattr(saved[k], 'shape')
              and tuple(saved[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for name, items in (('missing', missing), ('unexpected', unexpected),
                        ('shape mismatch (saved vs model)', shapes)):
        if items:
            parts.append(f'{len(items)} {name} (e.g. {", ".join(items[:3])})')
    raise ValueError(
        f'cannot resume from {source}: it was written by another '
        f'architecture ({"; ".join(parts)}). Resuming needs a checkpoint of '
        f'this config\'s model ({type(model).__name__}); to start from '
        f'other weights use `load_from` (or init_cfg) without --resume.')

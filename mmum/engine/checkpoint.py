"""Clear errors when a checkpoint cannot be used.

* :func:`load_from_local` replaces mmengine's loader of local files (through
  ``CheckpointLoader.register_scheme``, mmengine's extension point; applied
  by ``import mmum``): a truncated or non-checkpoint file raises a
  ``RuntimeError`` that names the file and what to do, instead of torch's
  "PytorchStreamReader failed reading zip archive".
* :func:`check_resume_compatible` (called by ``mmum.SafeCheckpointHook``
  when resuming) rejects a checkpoint written by another architecture before
  its weights are half-loaded with ``strict=False``.
* :func:`checkpoint_problem` / :func:`newest_intact_checkpoint`: a cheap
  check whether a checkpoint file is complete, and the newest complete
  ``iter_N.pth`` / ``epoch_N.pth`` of a work dir (``tools/train.py
  --resume`` uses them when ``last_checkpoint`` points at a broken file).
"""
import errno
import os
import os.path as osp
import re
import zipfile
from typing import Optional

import torch
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.runner.checkpoint import load_from_local as _mmengine_load


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location):
    """mmengine's local loader; unreadable files name themselves."""
    try:
        return _mmengine_load(filename, map_location)
    except (FileNotFoundError, IsADirectoryError, PermissionError,
            MemoryError):
        raise  # they name the file already / are not about the file
    except Exception as e:
        # a truncated file makes torch fail in many ways: "failed finding
        # central directory", "unexpected EOF", EOFError, struct.error (legacy
        # format), UnpicklingError, or a bare OSError(EINVAL) from a seek
        # before the start of the file
        if isinstance(e, OSError) and e.errno not in (None, errno.EINVAL):
            raise
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


def checkpoint_problem(path: str) -> Optional[str]:
    """``None`` if ``path`` is a complete checkpoint file, else what is wrong
    with it (missing, empty, truncated / corrupt).

    A file of ``torch.save`` is a zip archive whose directory sits at its
    end, so a truncated file is found by reading the directory and checking
    that every member lies inside the file, without loading the tensors.
    Files in torch's legacy (non-zip) format are loaded to be checked.
    """
    if not osp.isfile(path):
        return 'missing'
    size = osp.getsize(path)
    if size == 0:
        return 'empty (0 bytes)'
    if not zipfile.is_zipfile(path):
        try:
            load_from_local(path, 'cpu')
        except RuntimeError:
            return f'truncated or corrupt ({size} bytes, not loadable)'
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.header_offset + info.compress_size > size:
                    return f'truncated ({size} bytes)'
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return f'truncated or corrupt ({size} bytes: {e})'
    return None


def newest_intact_checkpoint(work_dir: str,
                             exclude: Optional[str] = None) -> Optional[str]:
    """The newest (highest N) complete ``iter_N.pth`` or ``epoch_N.pth`` in
    ``work_dir`` other than ``exclude``, or ``None``."""
    found = []
    for name in os.listdir(work_dir) if osp.isdir(work_dir) else []:
        m = re.fullmatch(r'(?:iter|epoch)_(\d+)\.pth', name)
        path = osp.join(work_dir, name)
        if m and not (exclude and osp.exists(exclude)
                      and osp.samefile(path, exclude)):
            found.append((int(m.group(1)), osp.getmtime(path), path))
    for *_, path in sorted(found, reverse=True):
        if checkpoint_problem(path) is None:
            return path
    return None


def check_resume_checkpoint(cfg, from_intact: bool = False) -> None:
    """Before a run that resumes (``cfg.resume``), make sure the checkpoint
    it resumes from is complete.

    The checkpoint is ``cfg.load_from`` or, if that is unset, the one the
    work dir's ``last_checkpoint`` names. If it is broken, raise
    ``RuntimeError`` naming it and the newest intact earlier checkpoint of
    the work dir; with ``from_intact`` switch ``cfg.load_from`` to that
    checkpoint instead (and say so), never silently.
    """
    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import find_latest_checkpoint
    if not cfg.get('resume'):
        return
    work_dir = cfg.get('work_dir') or '.'
    path = cfg.get('load_from') or find_latest_checkpoint(work_dir)
    if not path or '://' in str(path):
        return  # nothing to resume from (mmengine starts anew) / remote file
    problem = checkpoint_problem(path)
    if problem is None:
        return
    intact = newest_intact_checkpoint(work_dir, exclude=path)
    if from_intact and intact:
        print_log(
            f'resume: checkpoint {path} is {problem}; resuming from the '
            f'newest intact checkpoint {intact} instead (--resume-from-'
            'intact)', logger='current', level=30)
        cfg.load_from = intact
        return
    if intact:
        what = (f'The newest intact earlier checkpoint in {work_dir} is '
                f'{intact}: resume from it with `--resume {intact}` or '
                '`--resume-from-intact`.')
    else:
        what = (f'No intact iter_N.pth / epoch_N.pth is left in {work_dir}:'
                ' start again without --resume (or set resume=False).')
    raise RuntimeError(f'cannot resume: checkpoint {path} is {problem}. '
                       + what)

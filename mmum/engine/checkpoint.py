"""Clear errors when a checkpoint cannot be used.

* :func:`load_from_local` replaces mmengine's loader of local files (through
  ``CheckpointLoader.register_scheme``, mmengine's extension point; applied
  by ``import mmum``; it serves ``load_from``, ``--resume`` and
  ``init_cfg=dict(type='Pretrained')``): a truncated or non-checkpoint file
  raises a ``RuntimeError`` that names the file, what it looks like (an HTML
  page, a Git LFS pointer, a safetensors file, ...) and what to do, instead
  of torch's "PytorchStreamReader failed reading zip archive" or "Weights
  only load failed ... Re-running with weights_only=False will likely
  succeed" (it would not). :func:`read_checkpoint` does the same for the
  tools that call ``torch.load`` themselves (the importers,
  ``extract_backbone.py``).
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


def _snippet(head: bytes) -> str:
    text = head[:40].decode('latin-1').split('\n')[0].strip()
    return repr(text[:32])


def not_a_checkpoint(path: str) -> Optional[str]:
    """``None`` if ``path`` starts as a file of ``torch.save`` does (a zip
    archive holding ``<name>/data.pkl``, or torch's legacy pickle format),
    else what the file looks like, e.g. ``"is empty (0 bytes)"`` or
    ``"starts with '<!DOCTYPE html>' -- an HTML page ..."``.

    Only the first bytes (and a zip's directory) are read. A truncated zip
    checkpoint counts as a checkpoint here: :func:`checkpoint_problem`
    tells truncated files apart.
    """
    size = osp.getsize(path)
    if size == 0:
        return 'is empty (0 bytes): a download or a copy that never wrote?'
    with open(path, 'rb') as f:
        head = f.read(512)
    if head.startswith(b'PK\x03\x04'):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None  # a truncated zip: the loader's message covers it
        if any(n.endswith('/data.pkl') or n == 'data.pkl' for n in names):
            return None
        return (f'is a zip archive, but not one torch.save writes (no '
                f'data.pkl; it holds {", ".join(names[:4])}'
                f'{", ..." if len(names) > 4 else ""}): unpack it and use '
                'the .pth inside?')
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04',
                                           b'\x05'):
        return None  # a pickle: torch's legacy format (or plain pickle)
    text = head.lstrip(b'\xef\xbb\xbf \t\r\n').lower()
    if text.startswith((b'<!doctype html', b'<html', b'<head', b'<?xml')):
        return (f'starts with {_snippet(head.lstrip())} -- an HTML/XML page, '
                'not a checkpoint: a failed download (a login, error or '
                'redirect page saved under the checkpoint\'s name)? Download '
                'it again, e.g. with `wget -O` from the direct file link')
    if text.startswith(b'version https://git-lfs'):
        return ('is a Git LFS pointer, not the file it points to: fetch the '
                'file with `git lfs pull`')
    if head[:2] == b'\x1f\x8b':
        return 'is a gzip file: unpack it (gunzip / tar -xzf) first'
    if len(head) > 262 and head[257:262] == b'ustar':
        return 'is a tar archive: unpack it (tar -xf) first'
    if head[:4] == b'\x89HDF':
        return 'is an HDF5 file (Keras / h5py), not a torch checkpoint'
    if len(head) >= 10 and head[8:10] == b'{"':
        return ('is a safetensors file: load it with '
                '`safetensors.torch.load_file` and write the dict with '
                '`torch.save({"state_dict": sd}, NEW.pth)`')
    if text[:1] in (b'{', b'['):
        return f'is a JSON/text file starting with {_snippet(head)}'
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    if printable > 0.95 * len(head):
        return f'is a text file starting with {_snippet(head)}'
    return (f'starts with the bytes {head[:8].hex(" ")}, which no torch.save '
            'file does (a zip archive starts with "PK", the legacy format '
            'with 80 02): random or corrupt data, or another format')


def _not_a_checkpoint_error(filename: str, problem: str) -> RuntimeError:
    return RuntimeError(
        f'cannot read checkpoint {filename!r} '
        f'({osp.getsize(filename)} bytes): it {problem}. A checkpoint is a '
        'file written by torch.save (a zip archive holding data.pkl).')


def read_checkpoint(filename: str, **kwargs):
    """``torch.load(filename, **kwargs)`` for the tools, with mmum's error
    (file named, what it looks like) for a file that is not a checkpoint or
    is truncated."""
    problem = not_a_checkpoint(filename)
    if problem:
        raise _not_a_checkpoint_error(filename, problem)
    try:
        return torch.load(filename, **kwargs)
    except (FileNotFoundError, IsADirectoryError, PermissionError,
            MemoryError):
        raise
    except Exception as e:
        if 'Weights only' in str(e) or 'weights_only' in str(e):
            raise
        raise _unreadable(filename, e) from e


def _unreadable(filename: str, e: Exception) -> RuntimeError:
    size = osp.getsize(osp.expanduser(filename))
    return RuntimeError(
        f'cannot read checkpoint {filename!r} ({size} bytes): '
        f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
        f'. A checkpoint must be a complete file written by torch.save; '
        f'this one is truncated or not a checkpoint (a save that was '
        f'killed?). Resume from an earlier checkpoint of the work dir '
        f'instead.')


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location):
    """mmengine's local loader; unreadable files name themselves."""
    path = osp.expanduser(filename)
    problem = osp.isfile(path) and not_a_checkpoint(path)
    if problem:
        raise _not_a_checkpoint_error(filename, problem)
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
        raise _unreadable(filename, e) from e


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
    other = not_a_checkpoint(path)
    if other:
        return f'not a checkpoint ({size} bytes): it {other}'
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

"""mmengine's Runner steps done as a user means them (applied by
``import mmum``, so every config with ``custom_imports=['mmum']`` and every
tool gets them).

1. **Starting from weights vs continuing a run** (:func:`load_or_resume`).
   mmengine resumes from ``load_from`` whenever ``resume=True`` (mmum's
   pre-training configs set it, for automatic resuming) and then reads
   ``checkpoint['meta']['epoch']``: a weights-only file (what the importers
   of ``tools/model_converters/`` and ``extract_backbone.py`` write) stops
   with ``KeyError: 'epoch'``. Here, before anything is loaded:

   - ``load_from`` holds weights only and ``resume=True``: if the work dir
     already has a checkpoint of a run (a restart of the run that began from
     these weights), that run is resumed; otherwise the weights are loaded
     and the schedule starts at epoch 0 / iteration 0. Both are logged as
     warnings naming the files. Keys the model lacks or tensors of another
     shape raise ``ValueError`` (another architecture); parts of the model
     the file does not hold (e.g. the decoder, after importing an
     encoder-only release) are named and keep their initialisation.
   - ``load_from`` is a run's checkpoint and ``resume=False``: the weights
     are loaded (as mmengine does) and the log says that the schedule starts
     anew, and how to continue the run instead.
   - ``load_from`` shares no key with the model: ``ValueError`` naming the
     file and its top-level names (mmengine would only warn and train from
     random weights).
   - Resuming a checkpoint saved without its optimizer state
     (``save_optimizer=False``): a warning that the optimizer restarts.

2. **``auto_scale_lr`` counts gradient accumulation** (:func:`scale_lr`).
   mmengine scales the learning rate by ``batch_size x world_size /
   base_batch_size``. mmum's configs state ``base_batch_size`` as the batch
   of one optimizer step, i.e. including ``optim_wrapper.accumulative_counts``
   (UM-MAE: 8 GPUs x 128 x 4 = 4096). The real batch is therefore
   ``batch_size x world_size x accumulative_counts``, and the log line
   says so.

3. **Pre-training settings that disagree** (:func:`build_model`): every
   model the Runner builds goes through
   :func:`mmum.models.selfsup.geometry.attach` (patch size, image size and
   mask unit in backbone, neck, head and pipeline; at build and at the first
   batch).
"""
import os.path as osp
import zipfile
from collections import Counter
from typing import Optional

import torch
from torch.utils.data import DataLoader
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict, _ParamScheduler
from mmengine.runner import Runner
from mmengine.runner.checkpoint import find_latest_checkpoint

from mmum.engine.checkpoint import load_from_local, not_a_checkpoint

_APPLIED = []


def peek_checkpoint(path: str) -> Optional[dict]:
    """The top-level dict of a local checkpoint, its tensors memory-mapped
    (cheap for torch's zip format), or ``None`` if it is not a local file
    or cannot be read with ``weights_only=True``."""
    if not osp.isfile(path) or not_a_checkpoint(path):
        return None
    try:
        if zipfile.is_zipfile(path):
            ckpt = torch.load(path, map_location='cpu', mmap=True,
                              weights_only=True)
        else:
            ckpt = load_from_local(path, 'cpu')
    except Exception:
        return None  # the real load names the problem
    return ckpt if isinstance(ckpt, dict) else None


def is_training_checkpoint(ckpt: Optional[dict]) -> bool:
    """Whether ``ckpt`` is a Runner's checkpoint a run can resume from: the
    loop's epoch and iteration in ``meta`` and the ``message_hub`` (a file
    published with ``published_keys=['meta', 'state_dict']`` has the first
    but not the second: weights only)."""
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    return (isinstance(meta, dict) and 'epoch' in meta and 'iter' in meta
            and 'message_hub' in ckpt)


def _state_dict(ckpt: dict) -> dict:
    sd = ckpt.get('state_dict', ckpt)
    return {(k[7:] if k.startswith('module.') else k): v
            for k, v in sd.items() if hasattr(v, 'shape')}


def _tops(keys, n=6) -> str:
    count = Counter(k.split('.')[0] for k in keys)
    return ', '.join(f'{t} ({c})' for t, c in count.most_common(n))


def compare_weights(model: torch.nn.Module, ckpt: dict, path: str,
                    logger, strict_extra: bool) -> None:
    """Compare the tensors of ``ckpt`` with ``model``'s: raise
    ``ValueError`` if they share none (or, with ``strict_extra``, if the
    file has keys the model lacks or tensors of another shape); warn about
    the model's parts that the file does not hold."""
    saved, own = _state_dict(ckpt), model.state_dict()
    common = set(saved) & set(own)
    if not common:
        raise ValueError(
            f'load_from={path!r} shares no weight name with the model '
            f'{type(model).__name__}: its names start with '
            f'{_tops(ckpt.get("state_dict", ckpt))}, the model\'s with '
            f'{_tops(own)}. A checkpoint of a released research code is '
            'converted first (tools/model_converters/*_official_to_mmum.py);'
            ' a backbone-only file goes into '
            "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)"
            ' instead of load_from.')
    unexpected = sorted(set(saved) - set(own))
    shapes = sorted(k for k in common
                    if tuple(saved[k].shape) != tuple(own[k].shape))
    if strict_extra and (unexpected or shapes):
        what = []
        if unexpected:
            what.append(f'{len(unexpected)} names the model does not have '
                        f'(e.g. {", ".join(unexpected[:3])})')
        if shapes:
            what.append(f'{len(shapes)} tensors of another shape (e.g. '
                        + ', '.join(f'{k}: {tuple(saved[k].shape)} vs '
                                    f'{tuple(own[k].shape)}'
                                    for k in shapes[:2]) + ')')
        raise ValueError(
            f'load_from={path!r} does not fit {type(model).__name__}: '
            + '; '.join(what) + '. It was written for another architecture '
            'or configuration: use the config it was made for (the '
            'importers print it) or another checkpoint.')
    missing = sorted(set(own) - set(saved))
    if missing:
        logger.warning(
            f'load_from={path!r} holds {len(common)} of the model\'s '
            f'{len(own)} tensors; these keep their initialisation: '
            f'{_tops(missing)} (e.g. an encoder-only checkpoint: the decoder'
            ' starts from its init).')


def load_or_resume(self) -> None:
    """:meth:`Runner.load_or_resume` with the mix-ups of weights-only files
    and run checkpoints resolved (module docstring)."""
    if self._has_loaded:
        return None
    src = self._load_from
    ckpt = peek_checkpoint(src) if isinstance(src, str) else None
    if ckpt is None:
        return _ORIGINAL['load_or_resume'](self)
    model = self.model.module if is_model_wrapper(self.model) else self.model
    if is_training_checkpoint(ckpt):
        if not self._resume:
            meta = ckpt['meta']
            self.logger.info(
                f'load_from={src!r} is the checkpoint of a run (epoch '
                f'{meta["epoch"]}, iteration {meta["iter"]}); resume=False: '
                'loading its weights only, the schedule starts anew. To '
                'continue that run set resume=True (tools/train.py --resume '
                f'{src}).')
        elif 'optimizer' not in ckpt:
            self.logger.warning(
                f'resuming from {src!r}, which was saved without the '
                'optimizer state (save_optimizer=False): the optimizer '
                '(e.g. AdamW moments) starts afresh.')
        return _ORIGINAL['load_or_resume'](self)
    if not self._resume:
        compare_weights(model, ckpt, src, self.logger, strict_extra=False)
        return _ORIGINAL['load_or_resume'](self)
    latest = find_latest_checkpoint(self.work_dir)
    if (latest and osp.isfile(latest) and not osp.samefile(latest, src)
            and is_training_checkpoint(peek_checkpoint(latest))):
        self.logger.warning(
            f'load_from={src!r} holds model weights only, and resume=True: '
            f'the work dir already has {latest!r} of a run (a restart of '
            'the run that began from these weights?): resuming it. To begin '
            f'again from {src!r}, use another work_dir or set resume=False.')
        self._load_from = latest
        return _ORIGINAL['load_or_resume'](self)
    compare_weights(model, ckpt, src, self.logger, strict_extra=True)
    self.logger.warning(
        f'load_from={src!r} holds model weights only (no epoch, iteration or'
        ' optimizer state: written by an importer or extract_backbone.py?), '
        'and resume=True: loading the weights and starting a fresh schedule '
        'at epoch 0, iteration 0. (resume=False says so; a restart of this '
        "run resumes from the work dir's last checkpoint.)")
    self._resume = False  # load, do not resume (hooks see a plain load)
    try:
        return _ORIGINAL['load_or_resume'](self)
    finally:
        self._resume = True


def accumulative_counts(optim_wrapper) -> int:
    """Gradient accumulation steps of a built optim wrapper (1 if none;
    the largest of an ``OptimWrapperDict``)."""
    wrappers = (list(optim_wrapper.values())
                if isinstance(optim_wrapper, OptimWrapperDict) else
                [optim_wrapper])
    return max(int(getattr(w, '_accumulative_counts', 1) or 1)
               for w in wrappers)


def scale_lr(self, optim_wrapper: OptimWrapper,
             auto_scale_lr: Optional[dict] = None) -> None:
    """:meth:`Runner.scale_lr` with the real batch of one optimizer step:
    ``batch_size x world_size x accumulative_counts`` (mmengine leaves the
    last factor out). Call it after building the optim wrapper and before
    the parameter schedulers, as mmengine's."""
    if auto_scale_lr is None or not auto_scale_lr.get('enable', False):
        return None
    if 'base_batch_size' not in auto_scale_lr:
        raise ValueError('auto_scale_lr.enable=True needs '
                         'auto_scale_lr.base_batch_size (the total batch of '
                         'one optimizer step the lr was set for)')
    if any(isinstance(s, _ParamScheduler) for s in _flat(
            self.param_schedulers)):
        raise RuntimeError('`scale_lr` should be called before building '
                           'ParamScheduler because ParamScheduler will '
                           'store initial lr from optimizer wrappers')
    loader = self._train_dataloader
    bs = (loader.batch_size if isinstance(loader, DataLoader) else
          loader['batch_size'])
    accum = accumulative_counts(optim_wrapper)
    real_bs = self.world_size * bs * accum
    base_bs = auto_scale_lr['base_batch_size']
    ratio = float(real_bs) / float(base_bs)
    self.logger.info(
        f'LR is set based on batch size of {base_bs} and the current batch '
        f'size is {real_bs} ({self.world_size} process(es) x {bs} images x '
        f'{accum} accumulated batch(es) per optimizer step). Scaling the '
        f'original LR by {ratio}.')
    wrappers = (list(optim_wrapper.values())
                if isinstance(optim_wrapper, OptimWrapperDict) else
                [optim_wrapper])
    for wrapper in wrappers:
        for group in wrapper.optimizer.param_groups:
            group['lr'] = group['lr'] * ratio


def _flat(schedulers):
    if isinstance(schedulers, dict) and 'type' not in schedulers:
        return [s for v in schedulers.values() for s in _flat(v)]
    if isinstance(schedulers, (list, tuple)):
        return [s for v in schedulers for s in _flat(v)]
    return [schedulers]


def build_model(self, model):
    """:meth:`Runner.build_model`, then the geometry checks of a
    pre-training model (:func:`mmum.models.selfsup.geometry.attach`)."""
    from mmum.models.selfsup.geometry import attach
    return attach(_ORIGINAL['build_model'](self, model), self.cfg)


_ORIGINAL = {}


def apply() -> None:
    """Install them on :class:`mmengine.runner.Runner` (idempotent)."""
    if _APPLIED:
        return
    for name, new in (('load_or_resume', load_or_resume),
                      ('scale_lr', scale_lr), ('build_model', build_model)):
        _ORIGINAL[name] = getattr(Runner, name)
        setattr(Runner, name, new)
    _APPLIED.append(True)


apply()

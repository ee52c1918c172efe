"""A :class:`~mmengine.hooks.CheckpointHook` whose checkpoints survive a kill.

mmengine 0.10.7 writes ``iter_N.pth`` in place and then overwrites the
``last_checkpoint`` pointer in place; with ``max_keep_ckpts`` it deletes the
oldest checkpoint *before* writing the new one. A job killed while saving can
therefore leave a truncated newest checkpoint (or, with ``max_keep_ckpts=1``,
none at all). :class:`SafeCheckpointHook` changes only the order and the way
files are written:

1. the checkpoint goes to a hidden ``.iter_N.pth.tmp`` next to its final
   place, is flushed to disk and renamed with :func:`os.replace` (atomic on
   POSIX): the name ``iter_N.pth`` always holds a complete checkpoint;
2. the ``last_checkpoint`` pointer is written the same way;
3. old checkpoints are removed only after the new one is in place.

When resuming, it refuses a checkpoint of another architecture with a
``ValueError`` (mmengine would load what fits with ``strict=False``). It also
stores every rank's torch RNG state in the checkpoint
(``meta['torch_rng_states']``) and restores it on resume, so algorithms that
draw masks inside the model (GreenMIM, LocalMIM) continue with the same masks
as an uninterrupted run. NumPy / Python RNGs (the data pipeline) need no
saving: the iteration loop replays the skipped batches on resume.

Non-local storage backends (``backend_args``) fall back to mmengine's saving.
"""
import os
import os.path as osp

import torch
from mmengine.dist import all_gather_object, get_dist_info, is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import find_latest_checkpoint

from mmum.engine.checkpoint import check_resume_compatible
from mmum.registry import HOOKS


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either its old content
    or all of ``data``, never a part of it (temp file, fsync, rename)."""
    tmp = osp.join(osp.dirname(path), f'.{osp.basename(path)}.tmp')
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_and_replace(tmp: str, path: str) -> None:
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _RestoreBefore:
    """Iterator proxy: calls ``restore`` before the ``(skip + 1)``-th batch,
    then puts the loop's own iterator back."""

    def __init__(self, loop, iterator, skip, restore):
        self.loop, self.iterator = loop, iterator
        self.skip, self.restore = skip, restore

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip == 0:
            self.restore()
            self.loop.dataloader_iterator = self.iterator
        self.skip -= 1
        return next(self.iterator)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """:class:`~mmengine.hooks.CheckpointHook` with atomic, kill-safe saving
    and per-rank torch RNG state; same arguments.

    Use it in a config as ``default_hooks.checkpoint.type =
    'mmum.SafeCheckpointHook'``.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        states = getattr(self, '_resumed_rng_states', None)
        self._resumed_rng_states = None
        if states is None:
            return
        rank, world_size = get_dist_info()
        if len(states) != world_size:
            runner.logger.warning(
                f'checkpoint holds the torch RNG states of {len(states)} '
                f'ranks, this run has {world_size}: not restoring them '
                f'(masks drawn in the model will differ from an '
                f'uninterrupted run)')
            return
        state = states[rank]
        loop = runner.train_loop
        if not hasattr(loop, 'dataloader_iterator'):  # epoch-based
            torch.set_rng_state(state)
            return
        # The iteration loop first replays the batches it skips; restarting
        # the DataLoader there draws from torch's RNG. Restore the state
        # after that, just before the batch of the first resumed iteration.
        loop.dataloader_iterator = _RestoreBefore(
            loop, loop.dataloader_iterator, loop.iter,
            lambda: torch.set_rng_state(state))

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        if getattr(runner, '_resume', False):  # not for load_from
            model = runner.model.module if is_model_wrapper(
                runner.model) else runner.model
            source = (getattr(runner, '_load_from', None)
                      or find_latest_checkpoint(runner.work_dir)
                      or 'the resumed checkpoint')
            check_resume_compatible(model, checkpoint, repr(source))
        # applied in before_train: Runner.resume may still re-seed after this
        self._resumed_rng_states = checkpoint.get('meta', {}).get(
            'torch_rng_states')

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        states = getattr(self, '_rng_states', None)
        if states is not None:
            checkpoint['meta']['torch_rng_states'] = states

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)
        # every rank's RNG state (collective: every rank calls this)
        state = torch.get_rng_state()
        self._rng_states = (all_gather_object(state)
                            if get_dist_info()[1] > 1 else [state])

        # bookkeeping as mmengine does it, but delete files only afterwards
        retired = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                retired = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        tmp_filename = f'.{ckpt_filename}.tmp'
        runner.save_checkpoint(  # rank 0 only (master_only)
            self.out_dir,
            tmp_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        self._rng_states = None
        if not is_main_process():
            return
        _fsync_and_replace(
            self.file_backend.join_path(self.out_dir, tmp_filename),
            self.last_ckpt)
        atomic_write_bytes(
            osp.join(runner.work_dir, 'last_checkpoint'),
            self.last_ckpt.encode())

        if retired is not None:
            old = self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(retired))
            if self.file_backend.isfile(old):
                self.file_backend.remove(old)

"""Test-only hook for the reliability tests, imported into ``tools/train.py``
runs through ``custom_imports``.

* writes one JSON line per iteration to ``<work_dir>/probe_rank<r>.jsonl``:
  the iteration, the loss and the lr of every param group (FreezeOut gives
  each layer its own);
* with ``MMUM_STALL_SAVE_AT=N`` in the environment, the save of the
  checkpoint of iteration ``N`` writes half of its bytes, touches
  ``<work_dir>/stalled`` and hangs there, so a test can SIGKILL the process
  in the middle of saving.
"""
import json
import os
import os.path as osp
import time

from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class ReliabilityProbeHook(Hook):

    priority = 'LOWEST'

    def before_train(self, runner):
        self.path = osp.join(runner.work_dir, f'probe_rank{runner.rank}.jsonl')
        stall_at = os.environ.get('MMUM_STALL_SAVE_AT')
        if stall_at is None:
            return
        marker = osp.join(runner.work_dir, 'stalled')
        put = LocalBackend.put

        def stalling_put(backend, obj, filepath):
            if f'iter_{stall_at}.pth' in osp.basename(str(filepath)):
                with open(filepath, 'wb') as f:
                    f.write(obj[:len(obj) // 2])
                    f.flush()
                open(marker, 'w').close()
                time.sleep(600)
            return put(backend, obj, filepath)

        LocalBackend.put = stalling_put

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.lrs = [g['lr'] for g in runner.optim_wrapper.param_groups]

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        row = dict(iter=runner.iter + 1, loss=float(outputs['loss']),
                   lrs=self.lrs)
        with open(self.path, 'a') as f:
            f.write(json.dumps(row) + '\n')

"""Test-only hook (``custom_imports``): rank 1 raises before its first
iteration, as a rank that meets a bad input would."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class FailOnRankOneHook(Hook):

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.rank == 1 and runner.iter == 1:
            raise ValueError('rank 1 failed on purpose (test)')

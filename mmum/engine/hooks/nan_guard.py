"""Stop training when the loss stops being finite."""
import math

import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import Hook

from mmum.registry import HOOKS


@HOOKS.register_module()
class NaNGuardHook(Hook):
    """Stops training with :class:`FloatingPointError` as soon as a logged
    loss is NaN or infinite.

    It runs after the iteration and before the checkpoint hook (priority
    ``ABOVE_NORMAL`` < ``VERY_LOW``), so the weights the bad step produced are
    never saved: the latest checkpoint stays the last good one, and the
    message names it. Under DDP the ranks agree (one all-reduce of a flag per
    check), so all of them stop together instead of one waiting forever.

    Args:
        interval (int): Check every ``interval`` iterations. Defaults to 1.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, interval: int = 1):
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'NaNGuardHook: interval must be a positive '
                             f'integer, got {interval!r}')
        self.interval = interval

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if not self.every_n_train_iters(runner, self.interval) or not outputs:
            return
        bad = {}
        for name, value in outputs.items():
            if 'loss' not in name:
                continue
            v = float(value.detach().float().mean()) if isinstance(
                value, torch.Tensor) else float(value)
            if not math.isfinite(v):
                bad[name] = v
        flag = torch.tensor([1.0 if bad else 0.0])
        if get_dist_info()[1] > 1:
            all_reduce(flag, op='sum')
        if flag.item() == 0:
            return
        last = runner.message_hub.get_info('last_ckpt')
        where = (f'the last good checkpoint is {last}; resume from it with '
                 f'`--resume {last}` after lowering the learning rate or '
                 f'fixing the data' if last else
                 'no checkpoint was saved yet')
        what = (', '.join(f'{k}={v}' for k, v in bad.items())
                if bad else 'on another rank')
        raise FloatingPointError(
            f'NaNGuardHook: loss is not finite at iteration {runner.iter + 1} '
            f'(epoch {runner.epoch + 1}): {what}. Losses must be finite '
            f'numbers; training stopped before saving this state, {where}.')

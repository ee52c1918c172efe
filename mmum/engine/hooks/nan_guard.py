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
    message names it.

    One fused check per checked iteration: the loss terms (every output
    whose name holds ``'loss'``) are reduced to one flag on their device
    (one ``isfinite`` over the stacked means) and read once, so a check costs
    one host-device sync however many terms there are (the per-term values
    are read only when the flag is bad, for the message). Under DDP the flag
    is all-reduced on its device (one collective; no host copy with NCCL),
    so all ranks stop together instead of one waiting forever. With
    ``interval`` > 1 a bad loss is caught up to ``interval - 1`` iterations
    late (after a checkpoint of a bad state, unless the checkpoint interval
    is a multiple of ``interval``).

    Args:
        interval (int): Check every ``interval`` iterations. Defaults to 1.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, interval: int = 1):
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'NaNGuardHook: interval must be a positive '
                             f'integer, got {interval!r}')
        self.interval = interval

    @staticmethod
    def loss_terms(outputs: dict) -> dict:
        return {k: v for k, v in outputs.items() if 'loss' in k}

    @staticmethod
    def any_bad(terms: dict) -> torch.Tensor:
        """1-element float flag, 1 if any term is not finite, on the terms'
        device (CPU for Python numbers only)."""
        tensors = [v.detach().float().mean() for v in terms.values()
                   if isinstance(v, torch.Tensor)]
        numbers = [float(v) for v in terms.values()
                   if not isinstance(v, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device('cpu')
        if numbers:
            tensors.append(torch.tensor(numbers).to(device))
        if not tensors:
            return torch.zeros(1, device=device)
        values = torch.cat([t.reshape(-1).to(device) for t in tensors])
        return (~torch.isfinite(values)).any().float().reshape(1)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if not self.every_n_train_iters(runner, self.interval) or not outputs:
            return
        terms = self.loss_terms(outputs)
        flag = self.any_bad(terms)
        if get_dist_info()[1] > 1:
            all_reduce(flag, op='sum')
        if flag.item() == 0:  # the one host-device sync of a check
            return
        bad = {}
        for name, value in terms.items():
            v = float(value.detach().float().mean()) if isinstance(
                value, torch.Tensor) else float(value)
            if not math.isfinite(v):
                bad[name] = v
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

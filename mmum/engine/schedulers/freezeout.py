"""FreezeOut (Brock et al., 2017) as an mmengine parameter scheduler.

Every encoder layer ``i`` (``layer_id`` of its param groups, as given by the
model's ``get_layer_depth`` through mmpretrain's
``LearningRateDecayOptimWrapperConstructor``) gets its own freeze time
``t_i`` (a fraction of the schedule) and its own cosine curve that reaches 0
at ``t_i``; at that step the layer is frozen for good (see
:func:`freeze_params`). ViTFreeze (arXiv 2312.02194, §3.2-3.3) adds a linear
warm-up of every layer to its own peak ``lr_i(0)``.
"""
import logging
import math
import weakref
from typing import Iterable, List

import torch
from mmengine.logging import print_log
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler

from mmum.registry import PARAM_SCHEDULERS

SPACINGS = {'linear': 1, 'squared': 2, 'cubic': 3}
# schedulers a FreezeOutHook looks after (kept out of the state dict)
HOOKED = weakref.WeakSet()


def freeze_params(optimizer, params: Iterable[torch.Tensor]) -> None:
    """Stop training ``params`` for good.

    They stop requiring grad, lose their ``.grad`` and optimizer state, and
    leave their param groups; a group left empty is removed. ``optimizer`` is
    a torch optimizer or an mmengine ``OptimWrapper``.
    """
    params = list(params)
    ids = {id(p) for p in params}
    optimizer = getattr(optimizer, 'optimizer', optimizer)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
        optimizer.state.pop(p, None)
    groups = []
    for group in optimizer.param_groups:
        group['params'] = [p for p in group['params'] if id(p) not in ids]
        if group['params']:
            groups.append(group)
    optimizer.param_groups[:] = groups  # same list object the wrapper sees


def freeze_times(num_layers: int, t_0: float, spacing: str) -> List[float]:
    """Freeze time of each of ``num_layers`` encoder layers, as a fraction of
    the schedule: linear from ``t_0`` to 1, then raised to the spacing's
    power (cubic: ``t_0 = 0.8`` freezes the first layer at 0.512)."""
    if num_layers == 1:
        return [1.]
    power = SPACINGS[spacing]
    return [(t_0 + (1 - t_0) * i / (num_layers - 1))**power
            for i in range(num_layers)]


@PARAM_SCHEDULERS.register_module()
class FreezeOutLR(_ParamScheduler):
    r"""Layer-wise cosine learning rates that freeze each layer at its end.

    With ``s`` the step since ``begin``, ``T = end - begin`` steps, ``W``
    warm-up steps and ``T_i = t_i T`` the freeze step of layer ``i``:

    .. math::
        lr_i(s) = lr_i(0) \cdot s / W                       \quad s < W \\
        lr_i(s) = \tfrac12 lr_i(0)(1 + \cos(\pi \frac{s - W}{T_i - W}))
                                                         \quad W \le s < T_i

    and the layer is frozen from ``T_i`` on. Without warm-up this is the
    paper's :math:`\tfrac12 lr_i(0)(1+\cos(\pi t / t_i))`; with warm-up the
    cosine starts where the warm-up ends, so each layer rises linearly to
    exactly its own peak and the curve is continuous (paper Fig. 3).
    ``lr_i(0)`` is the group's initial lr, divided by ``t_i`` if
    ``scale_lr`` (every layer then travels the same integral of lr).

    Layers are the ``layer_id`` keys that mmpretrain's
    ``LearningRateDecayOptimWrapperConstructor`` writes from the model's
    ``get_layer_depth`` (``layer_decay_rate=1.`` keeps plain lrs). As in
    ``get_layer_depth``, the largest id holds everything after the encoder
    (final norm, decoders, heads): it and the last encoder layer follow the
    global cosine (``t = 1``) and are never frozen.

    Freezing removes the layer's params from the optimizer, so this scheduler
    must be the only one acting on the optimizer, and resuming needs
    :class:`mmum.FreezeOutHook` to freeze the same layers before the
    optimizer state is loaded.

    Args:
        optimizer (OptimWrapper | Optimizer): Wrapped optimizer.
        t_0 (float): Freeze time of the first layer before spacing, in
            (0, 1]. Defaults to 0.8.
        spacing (str): ``'linear'``, ``'squared'`` or ``'cubic'``.
            Defaults to ``'cubic'``.
        scale_lr (bool): Peak lr ``lr / t_i``. Defaults to True.
        warmup (int): Linear warm-up length, in steps of the scheduler
            (epochs if ``by_epoch``). Defaults to 0.
        begin (int): First step. Defaults to 0.
        end (int): End step (exclusive); must be finite. Defaults to INF,
            which the runner replaces with the length of training.
        last_step (int): See mmengine's schedulers. Defaults to -1.
        by_epoch (bool): Step per epoch. Defaults to True.
        verbose (bool): Print every update. Defaults to False.
    """

    def __init__(self,
                 optimizer,
                 t_0: float = 0.8,
                 spacing: str = 'cubic',
                 scale_lr: bool = True,
                 warmup: int = 0,
                 begin: int = 0,
                 end: int = INF,
                 last_step: int = -1,
                 by_epoch: bool = True,
                 verbose: bool = False):
        if spacing not in SPACINGS:
            raise ValueError(f'FreezeOutLR: spacing={spacing!r} is not one '
                             f'of {sorted(SPACINGS)}')
        if not 0 < t_0 <= 1:
            raise ValueError(f'FreezeOutLR: t_0={t_0} must be in (0, 1]')
        if end >= INF:
            raise ValueError('FreezeOutLR needs a finite `end` (the runner '
                             'sets it to the training length when a train '
                             'loop is configured)')
        if warmup < 0:
            raise ValueError(f'FreezeOutLR: warmup={warmup} must be >= 0')
        # an OptimWrapper with several groups appends a pseudo group that
        # tracks the base lr: it follows the global cosine
        base = getattr(optimizer, 'base_param_settings', None)
        missing = [i for i, g in enumerate(optimizer.param_groups)
                   if 'layer_id' not in g and g is not base]
        if missing:
            raise ValueError(
                f'FreezeOutLR: param groups {missing} have no `layer_id`; '
                "build the optimizer with constructor='LearningRate"
                "DecayOptimWrapperConstructor' (layer_decay_rate=1.0 keeps "
                'plain lrs) on a model with `get_layer_depth`')
        # ids 0 .. num_layers - 1 are encoder layers, id num_layers the rest
        self.num_layers = max(g.get('layer_id', 0)
                              for g in optimizer.param_groups)
        self.t = freeze_times(max(self.num_layers, 1), t_0, spacing) + [1.]
        self.t_0, self.spacing, self.scale_lr = t_0, spacing, scale_lr
        self.warmup = warmup
        self.total = end - begin
        if self.t[0] * self.total <= warmup and self.t[0] < 1:
            raise ValueError(
                f'FreezeOutLR: the first layer freezes at step '
                f'{self.t[0] * self.total:.1f} (t={self.t[0]:.3f} of '
                f'{self.total}), not after the warm-up of {warmup} steps; '
                'raise t_0 or shorten the warm-up')
        self.frozen_layers: List[int] = []
        super().__init__(optimizer, 'lr', begin, end, last_step, by_epoch,
                         verbose)
        torch_optim = getattr(optimizer, 'optimizer', optimizer)
        if hasattr(torch_optim, 'register_load_state_dict_pre_hook'):
            torch_optim.register_load_state_dict_pre_hook(
                self._check_frozen_before_load)

    def _check_frozen_before_load(self, optimizer, state_dict):
        """Before an optimizer state is loaded (resume): the layers frozen
        when it was saved (absent from its groups) must be frozen already,
        which :class:`mmum.FreezeOutHook` does; else torch would fail with
        "different number of parameter groups"."""
        saved = {g.get('layer_id') for g in state_dict.get('param_groups', [])}
        ours = {g.get('layer_id') for g in optimizer.param_groups}
        gone = sorted(i for i in ours - saved if i is not None)
        if gone:
            raise ValueError(
                f'FreezeOutLR: the optimizer state being loaded was saved '
                f'after layers {gone} froze, but they are not frozen here. '
                "Add dict(type='mmum.FreezeOutHook') to custom_hooks: on "
                'resume it freezes the saved layers before the optimizer '
                'state is loaded (and keeps frozen layers in eval mode).')

    @classmethod
    def build_iter_from_epoch(cls, *args, warmup=0, begin=0, end=INF,
                              by_epoch=True, epoch_length=None, **kwargs):
        """Build an iter-based instance from an epoch-based config."""
        if not by_epoch or not epoch_length:
            raise ValueError('FreezeOutLR: convert_to_iter_based needs '
                             'by_epoch=True and a positive epoch_length, got '
                             f'by_epoch={by_epoch}, '
                             f'epoch_length={epoch_length}')
        end = end if end >= INF else int(end * epoch_length)
        return cls(*args, warmup=int(warmup * epoch_length),
                   begin=int(begin * epoch_length), end=end, by_epoch=False,
                   **kwargs)

    def lr_at(self, initial_lr: float, layer_id: int, step: int) -> float:
        """The lr of a group of layer ``layer_id`` at ``step``."""
        t_i = self.t[layer_id]
        peak = initial_lr / t_i if self.scale_lr else initial_lr
        if step < self.warmup:
            return peak * step / self.warmup
        T_i = t_i * self.total
        if step >= T_i:
            return 0.
        return 0.5 * peak * (1 + math.cos(math.pi * (step - self.warmup) /
                                          (T_i - self.warmup)))

    def freeze_layers(self, layer_ids: Iterable[int]) -> None:
        """Freeze encoder layers for good (see :func:`freeze_params`)."""
        layer_ids = set(layer_ids) - set(self.frozen_layers)
        params = [p for g in self.optimizer.param_groups
                  if g.get('layer_id') in layer_ids for p in g['params']]
        freeze_params(self.optimizer, params)
        self.frozen_layers = sorted(set(self.frozen_layers) | layer_ids)

    def _get_value(self):
        return [
            self.lr_at(g['initial_lr'], g.get('layer_id', self.num_layers),
                       self.last_step) for g in self.optimizer.param_groups
        ]

    def step(self):
        self._global_step += 1
        if self.begin <= self._global_step < self.end:
            self.last_step += 1
            due = [
                i for i in range(self.num_layers)
                if self.t[i] < 1 and self.last_step >= self.t[i] * self.total
            ]
            if len(due) > len(self.frozen_layers):
                if self not in HOOKED:
                    print_log(  # tools/train.py stops such configs early
                        'FreezeOutLR freezes layers but no mmum.FreezeOutHook'
                        ' runs: add it to custom_hooks (frozen layers keep '
                        'dropout / drop path, DDP and resume fail)',
                        logger='current', level=logging.WARNING)
                self.freeze_layers(due)
            for i, (group, lr) in enumerate(
                    zip(self.optimizer.param_groups, self._get_value())):
                group['lr'] = lr
                self.print_value(self.verbose, i, lr)
        self._last_value = [g['lr'] for g in self.optimizer.param_groups]

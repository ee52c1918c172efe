"""Runtime side of :class:`mmum.FreezeOutLR`: eval mode, resume, DDP."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch.nn.parallel import DistributedDataParallel

from mmum.engine.schedulers.freezeout import HOOKED, FreezeOutLR
from mmum.registry import HOOKS


def freezeout_schedulers(runner):
    """``(index, FreezeOutLR)`` pairs of ``runner.param_schedulers`` (a list,
    or a dict of lists for several optimizers: index is ``(name, i)``)."""
    scheds = runner.param_schedulers or []
    if isinstance(scheds, dict):
        return [((name, i), s) for name, lst in scheds.items()
                for i, s in enumerate(lst) if isinstance(s, FreezeOutLR)]
    return [(i, s) for i, s in enumerate(scheds) if isinstance(s, FreezeOutLR)]


def check_freezeout_config(cfg) -> None:
    """Raise ``ValueError`` before anything is built if the config's
    ``param_scheduler`` has a ``FreezeOutLR`` but ``custom_hooks`` lacks
    ``FreezeOutHook`` (tools/train.py calls it): without the hook frozen
    layers keep dropout / drop-path on, DDP fails once a layer freezes, and
    a resume cannot restore the optimizer."""
    def name(t):
        return (t if isinstance(t, str) else getattr(t, '__name__', '')
                ).split('.')[-1]

    scheds = cfg.get('param_scheduler') or []
    if isinstance(scheds, dict):
        scheds = list(scheds.values()) if 'type' not in scheds else [scheds]
    flat = [s for x in scheds for s in (x if isinstance(x, list) else [x])]
    if not any(name(s.get('type', '')) == 'FreezeOutLR' for s in flat):
        return
    hooks = cfg.get('custom_hooks') or []
    if not any(name(h.get('type', '')) == 'FreezeOutHook' for h in hooks):
        raise ValueError(
            'param_scheduler has mmum.FreezeOutLR but custom_hooks has no '
            "mmum.FreezeOutHook; add dict(type='mmum.FreezeOutHook') to "
            'custom_hooks (it keeps frozen layers in eval mode, checks DDP '
            'and freezes the saved layers when resuming)')


@HOOKS.register_module()
class FreezeOutHook(Hook):
    """Keeps :class:`mmum.FreezeOutLR`'s frozen layers frozen.

    - Modules whose parameters all belong to frozen layers run in eval mode
      (re-applied every iteration, since the train loops call
      ``model.train()``).
    - On resume, freezes the layers recorded in the checkpoint's scheduler
      state *before* the optimizer state is loaded, so the optimizer's param
      groups match the saved ones.
    - Under DDP, frozen parameters stop receiving gradients, which the
      wrapper only tolerates with ``find_unused_parameters=True`` (set it in
      the config); we check it up front rather than rebuilding the wrapper.

    The model must provide ``get_layer_depth(param_name)`` (every mmpretrain
    self-supervisor and ViT / Swin backbone does).
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self):
        self._eval_cache = (None, [])  # (frozen layers, modules to eval)

    def before_train(self, runner):
        if not freezeout_schedulers(runner):
            raise ValueError('FreezeOutHook: no FreezeOutLR in '
                             'param_scheduler')
        for _, sched in freezeout_schedulers(runner):
            HOOKED.add(sched)
        model = runner.model
        inner = model.module if is_model_wrapper(model) else model
        if not hasattr(inner, 'get_layer_depth'):
            raise TypeError(f'FreezeOutHook: {type(inner).__name__} has no '
                            '`get_layer_depth(param_name)` to tell which '
                            'modules belong to which layer')
        if (isinstance(model, DistributedDataParallel)
                and not model.find_unused_parameters):
            raise ValueError(
                'FreezeOutLR freezes parameters during training, which DDP '
                'only tolerates with find_unused_parameters=True; add '
                '`find_unused_parameters = True` to the config')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        frozen = set()
        for _, sched in freezeout_schedulers(runner):
            frozen |= set(sched.frozen_layers)
        if not frozen:
            return
        if self._eval_cache[0] != frozen:
            model = runner.model.module if is_model_wrapper(
                runner.model) else runner.model
            modules = []
            for name, module in model.named_modules():
                names = [f'{name}.{n}' if name else n
                         for n, _ in module.named_parameters()]
                if names and all(model.get_layer_depth(n)[0] in frozen
                                 for n in names):
                    modules.append(module)
            self._eval_cache = (frozen, modules)
        for module in self._eval_cache[1]:
            module.eval()

    def after_load_checkpoint(self, runner, checkpoint):
        # only a resume restores the schedule; `load_from` loads weights only
        if not getattr(runner, '_resume', False):
            return
        saved = checkpoint.get('param_schedulers')
        if saved is None:
            return
        for index, sched in freezeout_schedulers(runner):
            state = (saved[index[0]][index[1]] if isinstance(index, tuple)
                     else saved[index])
            sched.freeze_layers(state.get('frozen_layers', []))

"""One optimizer param group per set of equal options (exact, faster)."""
from typing import List

from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from mmum.registry import OPTIM_WRAPPER_CONSTRUCTORS


def merge_param_groups(groups: List[dict]) -> List[dict]:
    """Merge the groups whose options (every key but ``'params'``) are equal.

    Groups come out in the order of their first parameter, each with its
    parameters in the input order; the options dicts are those of the first
    group of each set. The input groups are not modified.
    """
    merged: List[dict] = []
    for group in groups:
        options = {k: v for k, v in group.items() if k != 'params'}
        params = list(group['params'])
        for other in merged:
            if {k: v for k, v in other.items() if k != 'params'} == options:
                other['params'] += params
                break
        else:
            merged.append(dict(options, params=params))
    return merged


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MergedGroupsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's ``DefaultOptimWrapperConstructor`` with one param group per
    set of equal options instead of one per parameter.

    With a ``paramwise_cfg`` (``norm_decay_mult``, ``bias_decay_mult``,
    ``custom_keys``, ...) the default constructor gives every parameter its
    own group (230 for UM-MAE Swin-T, 365 for GreenMIM Twins-L), and torch's
    AdamW (single-tensor, foreach or fused) loops over the groups in Python
    and launches its kernels once per group. This constructor computes the
    same per-parameter options (it runs the default ``add_params``) and then
    merges the groups whose options are all equal
    (:func:`merge_param_groups`): 2-3 groups in the UM-MAE / GreenMIM /
    SimMIM recipes (decayed; not decayed; ``custom_keys`` ones, which also
    carry ``decay_mult``). Every parameter's update is bit-identical and
    schedulers set the same lr / weight decay on it; only the grouping
    differs. Optimizer step, one CPU thread, fused AdamW (``.notes/bench.md``,
    2026-11-30): UM-MAE Swin-T 63.9 -> 50.4 ms, SimMIM Swin-T 53.1 -> 42.5,
    GreenMIM Twins-L 176 -> 142, SimMIM Twins-L 165 -> 136; single-tensor
    AdamW (the configs' default on CPU) gains 3-9 %.

    Not for:

    - per-layer schedules: :class:`mmum.FreezeOutLR` needs the ``layer_id``
      groups of mmpretrain's ``LearningRateDecayOptimWrapperConstructor``,
      and raises a ``ValueError`` saying so on these groups.
    - layer-wise lr decay: that is mmpretrain's constructor, which already
      makes one group per (layer, decay) pair (merging them would stay exact
      and merge nothing: their lrs and ``layer_id`` differ). This one builds
      the default's options, which have no layer decay, so a
      ``layer_decay_rate`` raises a ``ValueError`` instead of being ignored.
    - resuming a checkpoint saved with another grouping: the optimizer state
      is indexed by group, so loading one saved with the default constructor
      (one group per parameter) raises a ``ValueError``; resume with the
      constructor it was saved with, or start from its weights
      (``load_from``).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None):
        if paramwise_cfg and 'layer_decay_rate' in paramwise_cfg:
            raise ValueError(
                'MergedGroupsOptimWrapperConstructor has no layer-wise lr '
                f'decay (paramwise_cfg.layer_decay_rate='
                f"{paramwise_cfg['layer_decay_rate']}); use constructor="
                "'mmpretrain.LearningRateDecayOptimWrapperConstructor'")
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: List[dict], module: nn.Module,
                   prefix: str = '', **kwargs) -> None:
        super().add_params(params, module, prefix, **kwargs)
        if not prefix:  # the outermost call: every parameter is in `params`
            n = len(params)
            params[:] = merge_param_groups(params)
            MMLogger.get_current_instance().info(
                f'MergedGroupsOptimWrapperConstructor: {n} per-parameter '
                f'groups merged into {len(params)} (one per set of equal '
                'options)')

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        optim_wrapper.optimizer.register_load_state_dict_pre_hook(
            _check_same_grouping)
        return optim_wrapper


def _check_same_grouping(optimizer, state_dict: dict) -> None:
    """Before torch loads an optimizer state (resume): the saved groups must
    hold as many parameters each as ours, else torch fails with a bare
    "different number of parameter groups"."""
    saved = [len(g['params']) for g in state_dict.get('param_groups', [])]
    ours = [len(g['params']) for g in optimizer.param_groups]
    if saved != ours:
        raise ValueError(
            f'cannot load the optimizer state: it has {len(saved)} param '
            f'groups of {saved[:8]}{"..." if len(saved) > 8 else ""} '
            f'parameters, this optimizer ({len(ours)} groups of {ours}) was '
            'built by mmum.MergedGroupsOptimWrapperConstructor (one group '
            'per set of equal options). The checkpoint was saved with '
            'another grouping (mmengine\'s default constructor makes one '
            'group per parameter): resume with the constructor it was saved '
            "with, e.g. --cfg-options optim_wrapper.constructor="
            "DefaultOptimWrapperConstructor for one saved with one group "
            'per parameter, or load only its weights (`load_from` without '
            '`resume`) and restart the optimizer state.')

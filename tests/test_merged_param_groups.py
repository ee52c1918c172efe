"""mmum.MergedGroupsOptimWrapperConstructor: the same training as mmengine's
default constructor (bit for bit), in one param group per set of options."""
import copy
import io

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.optim.scheduler import (CosineAnnealingLR,
                                      CosineAnnealingParamScheduler, LinearLR)
from torch import nn

import mmum  # noqa: F401
from mmum.engine.optimizers import merge_param_groups
from mmum.engine.schedulers.freezeout import FreezeOutLR

MERGED = 'mmum.MergedGroupsOptimWrapperConstructor'
# UM-MAE's recipe (configs/_base_/schedules/um_mae_adamw_coslr.py)
PARAMWISE = dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                 custom_keys={'mask_token': dict(decay_mult=0.),
                              'cpb': dict(decay_mult=0.)})


pytestmark = pytest.mark.usefixtures('one_thread')


class Toy(nn.Module):
    """Decayed weights, norms and biases (no decay) and custom-key params
    (no decay + ``decay_mult``), interleaved."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mask_token = nn.Parameter(torch.randn(1, 8))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)) for _ in range(3))
        self.cpb = nn.Linear(2, 8)
        self.head = nn.Linear(8, 4, bias=False)


def build(model, constructor=None, **optimizer):
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-2, betas=(0.9, 0.95),
                              weight_decay=0.05, **optimizer),
               paramwise_cfg=PARAMWISE)
    if constructor:
        cfg['constructor'] = constructor
    return build_optim_wrapper(model, cfg)


def schedulers(optim):
    return [LinearLR(optim, start_factor=0.1, by_epoch=False, end=3),
            CosineAnnealingLR(optim, T_max=5, by_epoch=False, begin=3,
                              end=8, eta_min=1e-4),
            CosineAnnealingParamScheduler(optim, 'weight_decay', T_max=8,
                                          by_epoch=False, eta_min=0.01)]


def train(model, optim, scheds, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        optim.step()
        optim.zero_grad()
        for s in scheds:
            s.step()


def options(model, optim):
    """name -> (lr, weight_decay) of the parameter's group."""
    group_of = {id(p): g for g in optim.optimizer.param_groups
                for p in g['params']}
    return {n: (group_of[id(p)]['lr'], group_of[id(p)]['weight_decay'])
            for n, p in model.named_parameters()}


def test_merge_param_groups_order():
    a, b, c, d = (torch.zeros(1) for _ in range(4))
    groups = [dict(params=[a], lr=1.), dict(params=[b], lr=2.),
              dict(params=[c], lr=1.), dict(params=[d], lr=1., x=0)]
    merged = merge_param_groups(groups)
    assert [[id(p) for p in g['params']] for g in merged] == \
        [[id(a), id(c)], [id(b)], [id(d)]]
    assert [{k: v for k, v in g.items() if k != 'params'}
            for g in merged] == [dict(lr=1.), dict(lr=2.), dict(lr=1., x=0)]
    assert [len(g['params']) for g in groups] == [1] * 4  # untouched


@pytest.mark.parametrize('impl', [dict(), dict(foreach=False),
                                  dict(fused=True)])
def test_same_training_as_default(impl):
    ref_model, model = Toy(), Toy()
    ref = build(ref_model, **impl)
    optim = build(model, MERGED, **impl)
    n = len(list(model.parameters()))
    assert len(ref.optimizer.param_groups) == n == 16
    # custom keys (no decay, + decay_mult): mask_token, cpb weight and bias;
    # decayed: 3 Linear weights and the head; no decay: 3 biases, 3 norms
    assert [len(g['params']) for g in optim.optimizer.param_groups] == \
        [3, 4, 9]
    assert options(model, optim) == options(ref_model, ref)
    ref_scheds, scheds = schedulers(ref), schedulers(optim)
    train(ref_model, ref, ref_scheds, 6, seed=1)
    train(model, optim, scheds, 6, seed=1)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.equal(p, q), name
    assert options(model, optim) == options(ref_model, ref)


def test_resume_round_trip():
    ref_model, model = Toy(), Toy()
    ref = build(ref_model, MERGED)
    optim = build(model, MERGED)
    ref_scheds, scheds = schedulers(ref), schedulers(optim)
    train(ref_model, ref, ref_scheds, 3, seed=1)
    train(model, optim, scheds, 3, seed=1)
    buffer = io.BytesIO()
    torch.save(dict(model=model.state_dict(), optim=optim.state_dict(),
                    scheds=[s.state_dict() for s in scheds]), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model = Toy()  # a new run resumes
    model.load_state_dict(saved['model'])
    optim = build(model, MERGED)
    scheds = schedulers(optim)
    optim.load_state_dict(saved['optim'])
    for s, state in zip(scheds, saved['scheds']):
        s.load_state_dict(state)
    train(ref_model, ref, ref_scheds, 3, seed=2)
    train(model, optim, scheds, 3, seed=2)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
    assert options(model, optim) == options(ref_model, ref)


def test_resume_per_parameter_checkpoint_is_refused():
    saved = build(Toy()).state_dict()  # default: one group per parameter
    optim = build(Toy(), MERGED)
    with pytest.raises(ValueError, match='16 param groups.*one group per '
                       'parameter.*resume with the constructor'):
        optim.load_state_dict(saved)


def test_not_for_freezeout_or_layer_decay():
    optim = build(Toy(), MERGED)
    with pytest.raises(ValueError, match='no `layer_id`.*LearningRateDecay'
                       'OptimWrapperConstructor'):
        FreezeOutLR(optim, end=10, by_epoch=False)
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
               constructor=MERGED,
               paramwise_cfg=dict(layer_decay_rate=0.75))
    with pytest.raises(ValueError, match='layer_decay_rate=0.75.*mmpretrain'
                       '.LearningRateDecayOptimWrapperConstructor'):
        build_optim_wrapper(Toy(), copy.deepcopy(cfg))

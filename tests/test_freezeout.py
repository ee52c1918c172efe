import math

import pytest
import torch
from mmengine.optim import OptimWrapper
from mmpretrain.engine.optimizers import \
    LearningRateDecayOptimWrapperConstructor
from torch import nn

import mmum  # noqa: F401
from mmum.engine.schedulers.freezeout import FreezeOutLR, freeze_times
from mmum.registry import PARAM_SCHEDULERS


pytestmark = pytest.mark.usefixtures('one_thread')


class Toy(nn.Module):
    """stem (layer 0), n blocks (layers 1..n), head (layer n + 1)."""

    def __init__(self, n=4):
        super().__init__()
        self.n = n
        self.stem = nn.Linear(3, 3)
        self.layers = nn.ModuleList(nn.Linear(3, 3) for _ in range(n))
        self.head = nn.Linear(3, 1)

    def get_layer_depth(self, name):
        if name.startswith('stem'):
            return 0, self.n + 2
        if name.startswith('layers'):
            return int(name.split('.')[1]) + 1, self.n + 2
        return self.n + 1, self.n + 2

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x).relu()
        return self.head(x).sum()


def build_optim(model, lr=0.1, optimizer='AdamW'):
    constructor = LearningRateDecayOptimWrapperConstructor(
        dict(type='OptimWrapper',
             optimizer=dict(type=optimizer, lr=lr, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay_rate=1.0))
    return constructor(model)


def expected_lr(lr, i, s, n_enc, t_0, power, total, warmup, scale_lr=True):
    """The spec, written independently of the scheduler."""
    if i >= n_enc - 1:  # last encoder layer and head: global cosine
        t_i = 1.
    else:
        t_i = (t_0 + (1 - t_0) * i / (n_enc - 1))**power
    peak = lr / t_i if scale_lr else lr
    if s < warmup:
        return peak * s / warmup
    if s >= t_i * total:
        return None  # frozen
    return 0.5 * peak * (1 + math.cos(math.pi * (s - warmup) /
                                      (t_i * total - warmup)))


def layer_lrs(optim):
    lrs = {}
    for g in optim.optimizer.param_groups:
        lrs.setdefault(g['layer_id'], set()).add(g['lr'])
    assert all(len(v) == 1 for v in lrs.values())
    return {k: v.pop() for k, v in lrs.items()}


@pytest.mark.parametrize('spacing,power,warmup,scale_lr',
                         [('linear', 1, 0, True), ('cubic', 3, 0, True),
                          ('linear', 1, 10, True), ('cubic', 3, 10, False),
                          ('squared', 2, 5, True)])
def test_lr_curves_match_formula(spacing, power, warmup, scale_lr):
    model = Toy(n=4)  # 5 encoder layers + head
    optim = build_optim(model)
    total, t_0 = 100, 0.5
    sched = FreezeOutLR(optim, t_0=t_0, spacing=spacing, scale_lr=scale_lr,
                        warmup=warmup, end=total, by_epoch=False)
    for s in range(total):
        lrs = layer_lrs(optim)
        for i in range(6):
            exp = expected_lr(0.1, i, s, 5, t_0, power, total, warmup,
                              scale_lr)
            if exp is None:
                assert i not in lrs, (s, i)
                assert i in sched.frozen_layers
            else:
                assert lrs[i] == pytest.approx(exp, rel=1e-9, abs=1e-12), \
                    (s, i)
        if warmup and s == warmup:  # every layer peaks at its own lr_i(0)
            assert lrs[0] == pytest.approx(0.1 / t_0**power if scale_lr
                                           else 0.1)
        optim.step()
        sched.step()
    # everything but the last encoder layer and the head was frozen
    assert sched.frozen_layers == [0, 1, 2, 3]
    assert sorted(layer_lrs(optim)) == [4, 5]


def test_paper_freeze_times():
    t = freeze_times(13, 0.8, 'cubic')  # ViT-B: patch embed + 12 blocks
    assert t[0] == pytest.approx(0.512)
    assert t[-1] == 1
    assert all(a < b for a, b in zip(t, t[1:]))
    assert freeze_times(13, 0.8, 'linear')[6] == pytest.approx(0.9)


def test_freezing_frees_params_and_state():
    torch.manual_seed(0)
    model = Toy(n=3)
    optim = build_optim(model)
    sched = FreezeOutLR(optim, t_0=0.5, spacing='linear', warmup=2, end=20,
                        by_epoch=False)
    layer0 = list(model.stem.parameters())
    seen_state = False
    for s in range(20):
        optim.zero_grad(set_to_none=True)
        model(torch.randn(4, 3)).backward()
        optim.step()
        seen_state |= all(p in optim.optimizer.state for p in layer0)
        sched.step()
        if 0 in sched.frozen_layers:
            break
    assert seen_state and s + 1 == 10  # t_0 * 20 steps
    for p in layer0:
        assert not p.requires_grad and p.grad is None
        assert p not in optim.optimizer.state
        assert all(p is not q for g in optim.param_groups
                   for q in g['params'])
    # training goes on: frozen params get no grad and do not change
    before = [p.clone() for p in layer0]
    optim.zero_grad(set_to_none=True)
    model(torch.randn(4, 3)).backward()
    optim.step()
    assert all(p.grad is None for p in layer0)
    assert all(torch.equal(a, b) for a, b in zip(before, layer0))


def test_convert_to_iter_based_and_registry():
    optim = build_optim(Toy())
    sched = PARAM_SCHEDULERS.build(
        dict(type='mmum.FreezeOutLR', warmup=2, begin=0, end=10, by_epoch=True,
             convert_to_iter_based=True),
        default_args=dict(optimizer=optim, epoch_length=7))
    assert (sched.warmup, sched.end, sched.total) == (14, 70, 70)
    assert not sched.by_epoch


def test_state_dict_round_trip():
    model = Toy()
    optim = build_optim(model)
    sched = FreezeOutLR(optim, t_0=0.5, end=10, by_epoch=False)
    for _ in range(7):
        optim.step()
        sched.step()
    state = sched.state_dict()
    assert state['frozen_layers'] == sched.frozen_layers != []
    torch.save(state, '/dev/null')  # plain python values only


def test_bad_input():
    optim = build_optim(Toy())
    with pytest.raises(ValueError, match='spacing'):
        FreezeOutLR(optim, spacing='quadratic', end=10)
    with pytest.raises(ValueError, match='t_0'):
        FreezeOutLR(optim, t_0=1.5, end=10)
    with pytest.raises(ValueError, match='finite'):
        FreezeOutLR(optim)
    with pytest.raises(ValueError, match='warm-up'):
        FreezeOutLR(optim, t_0=0.5, warmup=8, end=10)
    plain = OptimWrapper(torch.optim.SGD(Toy().parameters(), lr=0.1))
    with pytest.raises(ValueError, match='layer_id'):
        FreezeOutLR(plain, end=10)

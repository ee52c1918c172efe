"""DDP on CPU (``tools/dist_train.sh CONFIG 2``: gloo) and determinism.

The full-size configs under DDP are covered by tests/test_tools.py (slow);
here tiny versions (tests/configs/rel_*.py) keep one 2-process run in the
default suite.
"""
import os
import os.path as osp

import numpy as np
import pytest
import torch

import mmum  # noqa: F401
from _tiny_runs import (drop_new_default_scopes, free_port, load_tool,
                        make_imagenet_folder, run_tool)
from test_reliability_resume import ENV, probe_rows

UM_CFG = 'tests/configs/rel_um_mae.py'
GREEN_CFG = 'tests/configs/rel_green_mim.py'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_imagenet_folder(str(tmp_path_factory.mktemp('imagenet')),
                                size=160)


def dist_train(cfg, work, data, *args, opts=()):
    return run_tool(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir',
                     str(work), *args, '--cfg-options',
                     f'train_dataloader.dataset.data_root={data}', *opts],
                    env=dict(ENV, PORT=str(free_port())))


def masks(work):
    return [torch.load(osp.join(work, f'masks_rank{r}.pt')) for r in (0, 1)]


def checkpoints(work):
    return sorted(p for p in os.listdir(work) if p.endswith('.pth'))


def test_green_mim_two_processes(tmp_path, data_root):
    """2 CPU processes: each rank trains on its own mask even with the same
    seed on both ranks (GreenMIM's per-rank row of one draw), a new mask
    every step, and each checkpoint is written once (no temp files left)."""
    work = tmp_path / 'work'
    dist_train(GREEN_CFG, work, data_root,
               opts=['train_cfg.max_iters=4',
                     'randomness.diff_rank_seed=False'])
    assert checkpoints(work) == ['iter_2.pth', 'iter_4.pth']
    assert not [p for p in os.listdir(work) if p.endswith('.tmp')]
    m0, m1 = masks(work)
    assert len(m0) == len(m1) == 4
    for a, b in zip(m0, m1):
        assert a.shape == b.shape == (4, 4) and not torch.equal(a, b)
    assert not torch.equal(m0[0], m0[1])
    ckpt = torch.load(work / 'iter_4.pth', map_location='cpu')
    assert len(ckpt['meta']['torch_rng_states']) == 2  # one per rank


@pytest.mark.slow  # three launches of 2 processes: ~2-3 min
def test_green_mim_ddp_resume_is_exact(tmp_path, data_root):
    """A 2-process run resumed from iteration 2 trains iterations 3-6 on the
    same masks (every rank's RNG state is in the checkpoint) with the same
    losses and ends with the same weights as the uninterrupted run."""
    full, part = tmp_path / 'full', tmp_path / 'part'
    dist_train(GREEN_CFG, full, data_root)
    dist_train(GREEN_CFG, part, data_root, opts=['train_cfg.max_iters=2'])
    dist_train(GREEN_CFG, part, data_root, '--resume')
    a, b = probe_rows(full), probe_rows(part)
    for it in range(3, 7):
        assert b[it]['loss'] == pytest.approx(a[it]['loss'], rel=1e-6), it
        assert b[it]['lrs'] == a[it]['lrs']
    for r in (0, 1):  # the resumed run's masks = the last 4 of the full run
        torch.testing.assert_close(masks(part)[r], masks(full)[r][2:])
    sa = torch.load(full / 'iter_6.pth', map_location='cpu')['state_dict']
    sb = torch.load(part / 'iter_6.pth', map_location='cpu')['state_dict']
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # two launches of 2 processes: ~1-2 min
def test_um_mae_diff_rank_seed_under_ddp(tmp_path, data_root):
    """UM-MAE draws its masks in the pipeline: with ``diff_rank_seed=False``
    both ranks draw the same masks (same-size images), with the configs'
    ``diff_rank_seed=True`` they differ."""
    drawn = {}
    for diff in (True, False):
        work = tmp_path / f'diff_{diff}'
        dist_train(UM_CFG, work, data_root,
                   opts=['train_cfg.max_iters=2',
                         f'randomness.diff_rank_seed={diff}'])
        m0, m1 = masks(work)
        drawn[diff] = [torch.equal(a, b) for a, b in zip(m0, m1)]
    assert drawn == {True: [False, False], False: [True, True]}


# ------------------------------------------------------------ determinism
def test_diff_rank_seed_is_honoured(monkeypatch):
    """mmengine's set_random_seed offsets the seed by the rank only with
    diff_rank_seed=True; the pipeline's masks follow."""
    from mmengine.runner import utils

    from mmum.datasets.transforms import UniformMasking

    def draw(rank, diff):
        monkeypatch.setattr(utils, 'get_rank', lambda: rank)
        seed = utils.set_random_seed(0, diff_rank_seed=diff)
        mask = UniformMasking().transform(
            dict(img=np.zeros((128, 128, 3))))['mask']
        return seed, mask

    (s0, m0), (s1, m1) = draw(0, True), draw(1, True)
    assert (s0, s1) == (0, 1) and not np.array_equal(m0, m1)
    (s0, m0), (s1, m1) = draw(0, False), draw(1, False)
    assert s0 == s1 == 0 and np.array_equal(m0, m1)


@pytest.mark.parametrize('cfg', [UM_CFG, GREEN_CFG])
def test_same_seed_same_masks_and_losses(cfg, tmp_path, data_root):
    """Two runs with the same seed draw the same masks and log the same
    first losses; another seed changes the masks."""
    from mmengine.registry import DefaultScope
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train = load_tool('train')
    before = set(DefaultScope._instance_dict)

    def run(name, seed):
        work = tmp_path / name
        train.main([cfg, '--work-dir', str(work), '--cfg-options',
                    f'train_dataloader.dataset.data_root={data_root}',
                    'train_cfg.max_iters=2', f'randomness.seed={seed}',
                    'default_hooks.checkpoint.interval=100',
                    f'experiment_name={name}_{os.getpid()}'])
        return torch.load(work / 'masks_rank0.pt'), probe_rows(work)

    try:
        (ma, la), (mb, lb), (mc, _) = run('a', 0), run('b', 0), run('c', 1)
    finally:
        drop_new_default_scopes(before)
        torch.set_num_threads(threads)
    assert len(ma) == 2
    for x, y in zip(ma, mb):
        assert torch.equal(x, y)
    assert [la[i]['loss'] for i in (1, 2)] == [lb[i]['loss'] for i in (1, 2)]
    assert not all(torch.equal(x, y) for x, y in zip(ma, mc))

"""Crash-safe resume through ``tools/train.py`` (CPU, fixed seed).

Each case trains a tiny version of a pre-training config three times:

1. uninterrupted to the end;
2. killed with SIGKILL *while it writes a checkpoint* (the probe hook of
   ``tests/_reliability_probe.py`` writes half of ``iter_4.pth`` and hangs;
   ``iter_2.pth`` is already on disk);
3. ``--resume`` without a path in the killed run's work dir.

The killed run must leave a loadable latest checkpoint (``last_checkpoint``
points at ``iter_2.pth``; no truncated ``iter_4.pth``), and the resumed run
must log the same losses and lrs (every param group: FreezeOut gives each
layer its own) for iterations 3.. and end with the same weights and
optimizer state as the uninterrupted run.
"""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import time

import pytest
import torch

import mmum  # noqa: F401  (weights_only allow-list for Runner checkpoints)

from _tiny_runs import ROOT, make_imagenet_folder, python, run_tool

ENV = {'OMP_NUM_THREADS': '1', 'PYTHONPATH': osp.join(ROOT, 'tests')}
CASES = {
    'um_mae': ('tests/configs/rel_um_mae.py', 6, 4),
    'green_mim': ('tests/configs/rel_green_mim.py', 6, 4),
    # FreezeOut: layers freeze at iterations 6, 7.5, 9, 10.5; killed while
    # saving iteration 8, resumed from 6 (one layer frozen)
    'vitfreeze': ('tests/configs/rel_vitfreeze.py', 12, 8),
}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_imagenet_folder(str(tmp_path_factory.mktemp('imagenet')),
                                size=160)


def train_cmd(cfg, work, data, *args):
    return [python(), 'tools/train.py', cfg, '--work-dir', str(work), *args,
            '--cfg-options', f'train_dataloader.dataset.data_root={data}']


def probe_rows(work):
    """Iteration -> row of the probe log (the latest run wins)."""
    rows = {}
    with open(osp.join(work, 'probe_rank0.jsonl')) as f:
        for line in f:
            row = json.loads(line)
            rows[row['iter']] = row
    return rows


def scalar_rows(work):
    """Iteration -> the json scalars the LoggerHook wrote (all runs)."""
    rows = {}
    for path in sorted(glob.glob(osp.join(work, '2*', 'vis_data', '2*.json'))):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if 'loss' in row:
                    rows[row['iter']] = row
    return rows


def kill_while_saving(cfg, work, data, stall_at, timeout=600):
    """Start training, wait until it hangs half-way through writing the
    checkpoint of iteration ``stall_at``, SIGKILL it."""
    env = dict(os.environ, **ENV, MMUM_STALL_SAVE_AT=str(stall_at))
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    proc = subprocess.Popen(train_cmd(cfg, work, data), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    marker = osp.join(work, 'stalled')
    deadline = time.time() + timeout
    while not osp.exists(marker):
        if proc.poll() is not None:
            raise AssertionError(f'run ended before the kill point:\n'
                                 f'{proc.stderr.read()[-4000:]}')
        if time.time() > deadline:
            proc.kill()
            raise AssertionError('run never reached the kill point')
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def check_kill_and_resume(case, tmp_path, data_root):
    cfg, max_iters, stall_at = CASES[case]
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    run_tool(train_cmd(cfg, full, data_root), env=ENV)
    kill_while_saving(cfg, killed, data_root, stall_at)

    # the kill left the previous checkpoint as the latest, and it loads
    prev = killed / f'iter_{stall_at - 2}.pth'
    assert not (killed / f'iter_{stall_at}.pth').exists()
    assert (killed / f'.iter_{stall_at}.pth.tmp').exists()  # the torn write
    assert (killed / 'last_checkpoint').read_text() == str(prev)
    assert torch.load(prev, map_location='cpu')['meta']['iter'] == \
        stall_at - 2

    run_tool(train_cmd(cfg, killed, data_root, '--resume'), env=ENV)
    a, b = probe_rows(full), probe_rows(killed)
    assert sorted(a) == sorted(b) == list(range(1, max_iters + 1))
    for it in range(stall_at - 1, max_iters + 1):  # the resumed iterations
        assert b[it]['lrs'] == a[it]['lrs'], it
        assert b[it]['loss'] == pytest.approx(a[it]['loss'], rel=1e-6,
                                              abs=1e-7), it
    sa, sb = scalar_rows(full), scalar_rows(killed)
    for it in range(stall_at - 1, max_iters + 1):
        assert sb[it]['lr'] == sa[it]['lr'], it
        assert sb[it]['loss'] == pytest.approx(sa[it]['loss'], rel=1e-5), it

    ca = torch.load(full / f'iter_{max_iters}.pth', map_location='cpu')
    cb = torch.load(killed / f'iter_{max_iters}.pth', map_location='cpu')
    assert ca['state_dict'].keys() == cb['state_dict'].keys()
    for k, v in ca['state_dict'].items():
        torch.testing.assert_close(cb['state_dict'][k], v, rtol=1e-5,
                                   atol=1e-6, msg=k)
    ga, gb = (c['optimizer']['param_groups'] for c in (ca, cb))
    assert [g['lr'] for g in ga] == [g['lr'] for g in gb]
    assert ca['param_schedulers'] == cb['param_schedulers']
    # the torn temp file was replaced when iteration `stall_at` was saved
    assert not (killed / f'.iter_{stall_at}.pth.tmp').exists()
    return ca, cb


def test_um_mae_kill_while_saving_and_resume(tmp_path, data_root):
    check_kill_and_resume('um_mae', tmp_path, data_root)


@pytest.mark.slow  # three more launches of tools/train.py: ~1 min
def test_green_mim_kill_while_saving_and_resume(tmp_path, data_root):
    """GreenMIM draws its masks in the model with torch's RNG, which
    SafeCheckpointHook saves and restores."""
    check_kill_and_resume('green_mim', tmp_path, data_root)


@pytest.mark.slow  # three more launches of tools/train.py: ~1 min
def test_vitfreeze_kill_while_saving_and_resume(tmp_path, data_root):
    ca, cb = check_kill_and_resume('vitfreeze', tmp_path, data_root)
    for c in (ca, cb):
        assert c['param_schedulers'][0]['frozen_layers'] == [0, 1, 2, 3]
        assert c['meta']['pruned_decoders'] == [0, 1, 2]

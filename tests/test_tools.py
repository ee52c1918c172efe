"""tools/train.py, tools/test.py and the launch scripts, on CPU.

* resume through the real Runner (in-process, tiny classifier): the resumed
  run starts at the saved iteration and ends bit-identical to an
  uninterrupted run, so weights, optimizer and scheduler state were restored;
* ``tools/dist_train.sh CONFIG 2`` without GPUs: 2 processes on gloo, one
  checkpoint per save, ``--resume`` continues from the saved iteration;
* bad launch arguments fail with a clear message.
"""
import glob
import os
import os.path as osp
import pickle
import re
import uuid

import pytest
import torch

from _tiny_runs import (ROOT, TINY_CFG, drop_new_default_scopes,
                        free_port, load_tool, make_image_folder,
                        make_imagenet_folder, run_tool)

train_tool = load_tool('train')


def _tiny_args(work_dir, data_root, *extra_opts, resume=None):
    args = [TINY_CFG, '--work-dir', str(work_dir)]
    if resume is not None:
        args += ['--resume'] + ([] if resume == 'auto' else [str(resume)])
    args += ['--cfg-options', f'train_dataloader.dataset.data_root={data_root}',
             f'experiment_name=t{uuid.uuid4().hex[:8]}', *extra_opts]
    return args


def _trained_iters(runner_or_work_dir):
    """Iterations (1-based) logged by the LoggerHook (interval 1) of the
    latest run in a work dir."""
    log_file = getattr(runner_or_work_dir, 'log_dir', None)
    if log_file is None:
        log_file = sorted(glob.glob(osp.join(runner_or_work_dir, '2*')))[-1]
    text = open(glob.glob(osp.join(log_file, '*.log'))[0]).read()
    # two runs started within the same second share mmengine's timestamped
    # log dir: keep the last run's part of the file
    text = text.split('Checkpoints will be saved to')[-1]
    return [int(i) for i in re.findall(r'Iter\(train\) \[\s*(\d+)/', text)]


def _load(path):
    return torch.load(path, map_location='cpu')  # weights_only (torch>=2.6)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope='module', autouse=True)
def _isolate_default_scope():
    from mmengine.registry import DefaultScope
    before = set(DefaultScope._instance_dict)
    yield
    drop_new_default_scopes(before)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp('tiny_images')))


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, data_root):
    """4 uninterrupted iterations, checkpoints at 2 and 4."""
    os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    full = tmp_path_factory.mktemp('full_run')
    runner = train_tool.main(_tiny_args(full, data_root))
    assert _trained_iters(runner) == [1, 2, 3, 4]
    return full


def test_resume_through_runner(tmp_path, data_root, full_run):
    full, part = full_run, tmp_path / 'part'
    assert sorted(p for p in os.listdir(full) if p.endswith('.pth')) == \
        ['iter_2.pth', 'iter_4.pth']

    # resume from the middle checkpoint into a fresh work dir
    runner = train_tool.main(
        _tiny_args(part, data_root, resume=full / 'iter_2.pth'))
    assert _trained_iters(runner) == [3, 4]
    assert runner.iter == 4

    a, b = _load(full / 'iter_4.pth'), _load(part / 'iter_4.pth')
    assert a['meta']['iter'] == b['meta']['iter'] == 4
    _assert_same_state(a['state_dict'], b['state_dict'])
    # AdamW's step counter only reaches 4 if its state was restored at 2
    steps = {float(s['step']) for s in b['optimizer']['state'].values()}
    assert steps == {4.0}
    assert a['param_schedulers'] == b['param_schedulers']
    for sa, sb in zip(a['optimizer']['state'].values(),
                      b['optimizer']['state'].values()):
        _assert_same_state(sa, sb)

    # bare --resume picks the latest checkpoint of the work dir
    runner = train_tool.main(
        _tiny_args(part, data_root, 'train_cfg.max_iters=5', resume='auto'))
    assert _trained_iters(runner) == [5]


def test_test_tool(tmp_path, data_root, full_run):
    out = tmp_path / 'preds.pkl'
    metrics = load_tool('test').main([
        TINY_CFG, str(full_run / 'iter_4.pth'), '--work-dir', str(tmp_path),
        '--out', str(out), '--cfg-options',
        f'test_dataloader.dataset.data_root={data_root}',
        f'experiment_name=t{uuid.uuid4().hex[:8]}'])
    assert 0 <= metrics['accuracy/top1'] <= 100
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == 8  # one prediction per image

    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_tool('test').main([TINY_CFG, str(tmp_path / 'missing.pth')])


def test_amp_flag_without_cuda_trains_on_the_cpu_wrapper(tmp_path,
                                                          data_root):
    """--amp without CUDA: bf16 autocast where the CPU has native bf16, else
    fp32 (tests/test_cpu_amp.py); either way mmum.CPUAmpOptimWrapper."""
    if torch.cuda.is_available():
        pytest.skip('AMP is real with CUDA')
    runner = train_tool.main(
        ['--amp'] + _tiny_args(tmp_path, data_root, 'train_cfg.max_iters=1'))
    assert type(runner.optim_wrapper).__name__ == 'CPUAmpOptimWrapper'


@pytest.mark.parametrize('gpus', ['0', '-1', 'two', '1.5', ''])
def test_dist_train_rejects_bad_gpus(gpus):
    proc = run_tool_expect_fail(['bash', 'tools/dist_train.sh', TINY_CFG,
                                 gpus])
    assert proc.returncode == 2
    assert 'GPUS must be a positive integer' in proc.stderr
    assert f"'{gpus}'" in proc.stderr


def test_dist_scripts_usage():
    for script, n in (('dist_train.sh', 2), ('dist_test.sh', 3),
                      ('slurm_train.sh', 3)):
        proc = run_tool_expect_fail(['bash', f'tools/{script}'])
        assert proc.returncode == 2 and 'usage:' in proc.stderr


def run_tool_expect_fail(args):
    import subprocess
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0, proc.stdout
    return proc


@pytest.mark.slow  # three torchrun launches of 2 processes: ~100 s
def test_dist_train_two_cpu_processes_and_resume(tmp_path, data_root):
    work = tmp_path / 'work'
    opts = [f'train_dataloader.dataset.data_root={data_root}',
            'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=2']
    env = {'PORT': str(free_port())}
    run_tool(['bash', 'tools/dist_train.sh', TINY_CFG, '2', '--work-dir',
              str(work), '--cfg-options', *opts], env=env)
    ckpts = sorted(p for p in os.listdir(work) if p.endswith('.pth'))
    assert ckpts == ['iter_2.pth', 'iter_4.pth']  # written once, by rank 0
    assert _trained_iters(str(work)) == [1, 2, 3, 4]
    log = open(glob.glob(str(work / '2*' / '*.log'))[0]).read()
    assert 'Distributed training: True' in log

    resumed = tmp_path / 'resumed'
    env['PORT'] = str(free_port())
    run_tool(['bash', 'tools/dist_train.sh', TINY_CFG, '2', '--work-dir',
              str(resumed), '--resume', str(work / 'iter_2.pth'),
              '--cfg-options', *opts], env=env)
    assert _trained_iters(str(resumed)) == [3, 4]
    a, b = _load(work / 'iter_4.pth'), _load(resumed / 'iter_4.pth')
    assert b['meta']['iter'] == 4
    _assert_same_state(a['state_dict'], b['state_dict'])

    # dist_test.sh: both ranks evaluate, rank 0 dumps all 8 predictions
    out = tmp_path / 'preds.pkl'
    env['PORT'] = str(free_port())
    run_tool(['bash', 'tools/dist_test.sh', TINY_CFG,
              str(resumed / 'iter_4.pth'), '2', '--work-dir',
              str(tmp_path / 'test'), '--out', str(out), '--cfg-options',
              f'test_dataloader.dataset.data_root={data_root}'], env=env)
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == 8


def _shrink_opts(data_root, max_iters):
    """Shrink a pre-training config to a few CPU iterations on a small
    ImageNet-layout folder; model and pipeline stay as they are."""
    return [
        f'train_dataloader.dataset.data_root={data_root}',
        'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'train_cfg._delete_=True', 'train_cfg.type=IterBasedTrainLoop',
        f'train_cfg.max_iters={max_iters}',
        'default_hooks.checkpoint.by_epoch=False',
        'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1', 'log_processor.by_epoch=False',
        'optim_wrapper.accumulative_counts=1'
    ]


# config, the same config plus tests/_ddp_probe.py's mask recorder, and the
# extra options of the case
DDP_CASES = {
    # the headline: tools/dist_train.sh configs/um_mae/swin_t_200e.py 2
    'um_mae_swin_t': ('configs/um_mae/swin_t_200e.py',
                      'tests/configs/um_mae_probe.py', []),
    # GreenMIM draws one mask per rank and batch: ranks must differ even
    # when they share a seed
    'green_mim_swin_b': ('configs/green_mim/swin_b_800e.py',
                         'tests/configs/green_mim_probe.py',
                         ['randomness.diff_rank_seed=False']),
}


def _adamw_steps(ckpt):
    return {float(s['step']) for s in ckpt['optimizer']['state'].values()}


# the headline command runs in the default suite (two torchrun launches of
# 2 Swin-T processes, ~1 min on a quiet 2-core machine); GreenMIM Swin-B is
# heavier and slow-marked
@pytest.mark.parametrize('case', [
    'um_mae_swin_t',
    pytest.param('green_mim_swin_b', marks=pytest.mark.slow)
])
def test_dist_train_pretraining_two_cpu_processes(case, tmp_path):
    cfg, probe_cfg, extra = DDP_CASES[case]
    data = make_imagenet_folder(str(tmp_path / 'imagenet'))
    work = tmp_path / 'work'
    proc = run_tool(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir',
                     str(work), '--cfg-options', *_shrink_opts(data, 2),
                     *extra], env={'PORT': str(free_port())})
    # the config asks for AMP: the CPU wrapper says which precision
    assert 'AmpOptimWrapper on CPU: training in' in proc.stdout + proc.stderr
    assert sorted(p for p in os.listdir(work) if p.endswith('.pth')) == \
        ['iter_2.pth']  # written once, by rank 0
    assert _trained_iters(str(work)) == [1, 2]
    ckpt = _load(work / 'iter_2.pth')
    assert ckpt['meta']['iter'] == 2 and _adamw_steps(ckpt) == {2.0}

    # the configs set resume=True; --resume without a path picks iter_2.
    # This run also records the masks of both ranks.
    run_tool(['bash', 'tools/dist_train.sh', probe_cfg, '2', '--work-dir',
              str(work), '--resume', '--cfg-options', *_shrink_opts(data, 4),
              *extra],
             env={'PORT': str(free_port()),
                  'PYTHONPATH': osp.join(ROOT, 'tests')})
    assert _trained_iters(str(work)) == [3, 4]
    ckpt = _load(work / 'iter_4.pth')
    assert ckpt['meta']['iter'] == 4 and _adamw_steps(ckpt) == {4.0}

    masks = [torch.load(work / f'masks_rank{r}.pt') for r in (0, 1)]
    assert len(masks[0]) == len(masks[1]) == 2  # iterations 3 and 4
    for m0, m1 in zip(*masks):
        assert m0.shape == m1.shape and not torch.equal(m0, m1)
    assert not torch.equal(masks[0][0], masks[0][1])  # new mask each step


@pytest.mark.parametrize('args, work_dir, rest', [
    (['CFG.py'], 'work_dirs/CFG', []),
    (['CFG.py', 'my/dir'], 'my/dir', []),
    (['CFG.py', 'my/dir', '--amp'], 'my/dir', ['--amp']),
    (['CFG.py', '--resume', '--amp'], 'work_dirs/CFG', ['--resume', '--amp']),
])
def test_slurm_train_command_line(tmp_path, args, work_dir, rest):
    """A fake ``srun`` prints what slurm_train.sh would launch."""
    srun = tmp_path / 'srun'
    srun.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    srun.chmod(0o755)
    proc = run_tool(['bash', 'tools/slurm_train.sh', 'part', 'job', *args],
                    env={'PATH': f'{tmp_path}:{os.environ["PATH"]}',
                         'GPUS': '4', 'GPUS_PER_NODE': '2'})
    argv = proc.stdout.splitlines()
    assert argv[:2] == ['-p', 'part'] and '--ntasks=4' in argv
    assert '--ntasks-per-node=2' in argv and '--gres=gpu:2' in argv
    i = argv.index(osp.join(ROOT, 'tools', 'train.py'))
    assert argv[i + 1:] == ['CFG.py', f'--work-dir={work_dir}',
                            '--launcher=slurm', *rest]

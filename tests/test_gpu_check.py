"""tools/analysis_tools/gpu_check.py end to end on CPU in its smallest mode
(issue 18): every stage runs, the summary's lines say what ran and how, and
the pre-training paths run with mmcv's compiled ops refused (what an mmcv
built with MMUM_MMCV_OPS=0 lacks)."""
import os.path as osp
import re
import subprocess
import sys

import pytest

from _tiny_runs import ROOT, run_tool

GPU_CHECK = osp.join(ROOT, 'tools', 'analysis_tools', 'gpu_check.py')


@pytest.fixture(scope='module')
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check')
    proc = run_tool([sys.executable, GPU_CHECK, '--out', str(out), '--device',
                     'cpu', '--skip-install', '--no-mmcv-ops'],
                    env={'OMP_NUM_THREADS': '1'})
    return out, proc.stdout


def summary(stdout):
    """Label -> text of the lines after the summary header."""
    lines = stdout.split('==== gpu_check summary', 1)[1].splitlines()[1:]
    return dict(re.match(r'(.+?)\s*: (.*)$', ln).groups() for ln in lines
                if ln.strip())


def test_summary_lines(cpu_run):
    out, stdout = cpu_run
    s = summary(stdout)
    assert list(s) == ['install', 'amp fp16', 'amp bf16', 'device = cpu',
                       'benchmark', 'train+resume', 'mmcv ops', 'RESULT']
    assert s['install'].startswith('skipped')
    # fp16 is not claimed on CPU; bf16 ran every algorithm under autocast
    assert s['amp fp16'].startswith('n/a: fp16 autocast is not applicable')
    assert s['amp bf16'].startswith('PASS: 11/11 rows, losses finite, scaler '
                                    'stepped (CPU autocast, CPU GradScaler')
    # the same step on the device and on the CPU: here both are the CPU
    m = re.match(r'PASS: 11/11 rows, fp32, batch 1: largest rel. loss diff '
                 r'(\S+), gradient diff (\S+) of the largest \(tol 0.001\); '
                 r'both sides on the CPU', s['device = cpu'])
    assert m and float(m.group(1)) == float(m.group(2)) == 0
    assert s['benchmark'].startswith('PASS: 12 rows (fp32) at batch 1')
    # tools/train.py --amp without CUDA: bf16 autocast on a CPU with native
    # bf16, fp32 on others (mmum.CPUAmpOptimWrapper), and says which
    m = re.match(r'PASS: 4 iters \((bf16|fp32): tools/train.py --amp on a '
                 r'CPU with(out)? native bf16\), resumed from iter_2.pth: '
                 r'max rel. loss diff (\S+) \(tol 0.01\)', s['train+resume'])
    assert m and float(m.group(3)) <= 1e-6  # CPU: bit-exact resume
    # the repo's env has mmcv's ops: blocked; an MMUM_MMCV_OPS=0 env: absent
    assert s['mmcv ops'].startswith(('blocked (mmcv 2.1.0 has ops; mmcv._ext '
                                     'made absent', 'absent (mmcv 2.1.0'))
    assert s['RESULT'] == 'PASS (n/a: amp fp16)'
    # the summary comes last, the full log is in the folder
    assert stdout.rstrip().endswith(s['RESULT'])
    log = (out / 'gpu_check.log').read_text()
    assert '==== gpu_check summary' in log and 'tools/train.py' in log


def test_every_algorithm_stepped_in_bf16(cpu_run):
    _, stdout = cpu_run
    rows = re.findall(r'^  bfloat16 +(\S+) (\S+) *: loss (\S+), linear out '
                      r'bfloat16, step taken at try (\d)', stdout, re.M)
    assert [r[:2] for r in rows] == [
        ('UM-MAE', 'Swin-T'), ('UM-MAE', 'PVT-S'), ('GreenMIM', 'Swin-B'),
        ('GreenMIM', 'Twins-L'), ('LocalMIM', 'ViT-B'),
        ('ViTFreeze@0.6', 'ViT-B'), ('ViTFreeze@0.8', 'Swin-T'),
        ('SimMIM', 'Swin-T'), ('SimMIM', 'PVT-S'), ('SimMIM', 'Swin-B'),
        ('SimMIM', 'Twins-L')]


def test_benchmark_table_printed(cpu_run):
    _, stdout = cpu_run
    table = [ln for ln in stdout.splitlines() if ln.startswith('| ')]
    assert table[0].split('|')[1].strip() == 'method'
    rows = [ln.split('|')[1].strip() + ' ' + ln.split('|')[2].strip()
            for ln in table[1:]]
    assert rows[:13] == [
        'SimMIM Swin-T', 'UM-MAE Swin-T', 'SimMIM PVT-S', 'UM-MAE PVT-S',
        'SimMIM Swin-B', 'GreenMIM Swin-B', 'SimMIM Twins-L',
        'GreenMIM Twins-L', 'LocalMIM ViT-B', 'ViTFreeze@0.8 ViT-B',
        'LocalMIM Swin-T', 'ViTFreeze@0.8 Swin-T', 'method arch']
    assert 'peak MiB:' in stdout


def test_bad_arguments():
    def fails(*args):
        proc = subprocess.run([sys.executable, GPU_CHECK, *args], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode != 0
        return proc.stderr + proc.stdout

    assert '--out' in fails('--device', 'cpu')
    assert "--device 'tpu'" in fails('--out', '/tmp/x', '--device', 'tpu')
    assert 'even number' in fails('--out', '/tmp/x', '--device', 'cpu',
                                  '--train-iters', '3')


def test_no_cuda_or_no_wheelhouse_is_reported(tmp_path):
    import torch
    if not torch.cuda.is_available():
        proc = subprocess.run(
            [sys.executable, GPU_CHECK, '--out', str(tmp_path / 'a'),
             '--skip-install'], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 1
        assert 'sees no CUDA device; use --device cpu' in proc.stdout
    proc = subprocess.run(
        [sys.executable, GPU_CHECK, '--out', str(tmp_path / 'b'), '--device',
         'cpu'], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert 'install      : FAIL: --wheelhouse DIR is needed' in proc.stdout

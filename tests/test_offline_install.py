"""Installing mmum without a package index (issue 18):
``tools/make_wheelhouse.sh`` fills a wheelhouse, ``tools/setup_env.sh
--wheelhouse`` installs from it alone into a fresh venv, with mmcv built
without ops (``MMUM_MMCV_OPS=0``), and pre-training runs there.

The slow test keeps to minutes by reusing this machine's torch instead of
putting torch (and its CUDA libraries, gigabytes) into the wheelhouse:
``make_wheelhouse.sh --torch none`` and ``MMUM_TORCH_FROM=<this python>``;
every other package comes from the wheelhouse, the index switched off
(``PIP_NO_INDEX=1``)."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from _tiny_runs import ROOT, run_tool

SETUP = osp.join(ROOT, 'tools', 'setup_env.sh')
MAKE = osp.join(ROOT, 'tools', 'make_wheelhouse.sh')


def _fails(cmd, env=None):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=60)
    assert proc.returncode == 2, proc
    return proc.stderr


def test_bad_arguments_are_named(tmp_path):
    assert "unknown argument '--bogus' (valid: --wheelhouse DIR)" in _fails(
        ['bash', SETUP, '--bogus'])
    assert f"--wheelhouse '{tmp_path}/none' is not a directory" in _fails(
        ['bash', SETUP, '--wheelhouse', str(tmp_path / 'none')])
    assert "MMUM_MMCV_OPS='2' must be 0 or 1" in _fails(
        ['bash', SETUP], env={'MMUM_MMCV_OPS': '2'})
    assert f"MMUM_TORCH_FROM='{tmp_path}' is not a python" in _fails(
        ['bash', SETUP], env={'MMUM_TORCH_FROM': str(tmp_path)})
    assert 'missing DIR' in _fails(['bash', MAKE])
    assert "--python-version '311' is not like 3.11" in _fails(
        ['bash', MAKE, str(tmp_path), '--python-version', '311'])
    assert "unknown option '--pyhton-version'" in _fails(
        ['bash', MAKE, str(tmp_path), '--pyhton-version', '3.11'])


# the distributions mmum needs at run time besides torch
OWN_DEPS = ['mmcv-lite', 'mmengine', 'mmpretrain', 'mmdet', 'mmsegmentation',
            'numpy', 'scipy', 'opencv-python', 'pycocotools', 'ftfy',
            'regex', 'matplotlib', 'scikit-image', 'pytest']


@pytest.mark.slow
def test_install_from_wheelhouse_without_index(tmp_path):
    wheelhouse = tmp_path / 'wheelhouse'
    run_tool(['bash', MAKE, str(wheelhouse), '--torch', 'none'])
    files = os.listdir(wheelhouse)
    assert 'mmcv-2.1.0.tar.gz' in files
    assert not any(f.startswith('torch-') for f in files)
    for build_dep in ('setuptools-', 'wheel-', 'ninja-'):
        assert any(f.startswith(build_dep) for f in files), build_dep

    # gpu_check's install stage: setup_env.sh --wheelhouse into a throw-away
    # venv (mmcv without ops, this python's torch), then its AMP stage and
    # the train + resume run in that venv
    out = tmp_path / 'check'
    proc = run_tool(
        [sys.executable, 'tools/analysis_tools/gpu_check.py', '--out',
         str(out), '--device', 'cpu', '--wheelhouse', str(wheelhouse),
         '--stages', 'amp', 'train'],
        env={'PIP_NO_INDEX': '1', 'OMP_NUM_THREADS': '1'}, timeout=1500)
    tail = proc.stdout.split('==== gpu_check summary', 1)[1]
    assert 'install      : PASS' in tail
    assert 'amp bf16     : PASS: 8/8 rows' in tail
    assert 'train+resume : PASS' in tail
    assert 'mmcv ops     : absent (mmcv 2.1.0 built without ops)' in tail
    assert 'RESULT       : PASS (n/a: amp fp16)' in tail

    venv = out / 'venv'
    py = str(venv / 'bin' / 'python')
    probe = subprocess.run([py, '-c', f'''
import importlib.metadata as md, importlib.util, json, sys, torch, mmcv
print(json.dumps(dict(
    where={{n: str(md.distribution(n).locate_file('')) for n in {OWN_DEPS!r}}},
    mmcv_dists=sorted(d.metadata['Name'] for d in md.distributions()
                      if d.metadata['Name'].startswith('mmcv')
                      and str(d.locate_file('')).startswith(sys.prefix)),
    ext=importlib.util.find_spec('mmcv._ext') is not None,
    torch=torch.__file__, prefix=sys.prefix)))
'''], capture_output=True, text=True, cwd=str(tmp_path))
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    for name, where in info['where'].items():  # all from the wheelhouse
        assert where.startswith(str(venv)), (name, where)
    assert info['mmcv_dists'] == ['mmcv-lite'] and not info['ext']
    import torch
    assert info['torch'] == torch.__file__  # this machine's, untouched

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
    assert 'amp bf16     : PASS: 11/11 rows' in tail
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


FAKE_PYTHON = r'''#!/usr/bin/env bash
# stands in for python3: records pip calls, fakes the mmcv sdist
log="$FAKE_LOG"
case "$1 $2" in
  "-c "*) echo 3.11 ;;
  "-m venv") mkdir -p "$3/bin"; cp "$0" "$3/bin/python" ;;
  "-m pip")
    echo "$*" >> "$log"
    if [[ " $* " == *" mmcv==2.1.0 "* ]]; then
      for ((i = 1; i <= $#; i++)); do
        [ "${!i}" = -d ] && { j=$((i + 1)); d="${!j}"; }
      done
      t="$(mktemp -d)"; mkdir -p "$t/mmcv-2.1.0/mmcv.egg-info"
      printf 'addict\nyapf\nopencv-python>=3\n\n[all]\nninja\n' \
        > "$t/mmcv-2.1.0/mmcv.egg-info/requires.txt"
      tar czf "$d/mmcv-2.1.0.tar.gz" -C "$t" mmcv-2.1.0
    elif [[ " $* " == *" -r "* ]]; then
      for ((i = 1; i <= $#; i++)); do
        [ "${!i}" = -r ] && { j=$((i + 1)); cat "${!j}" >> "$log.reqs"; }
      done
    fi ;;
esac
exit 0
'''


def test_make_wheelhouse_pip_commands(tmp_path):
    """The pip calls make_wheelhouse.sh makes, without a network: a fake
    python3 records them."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'python3').write_text(FAKE_PYTHON)
    (bin_dir / 'python3').chmod(0o755)
    log = tmp_path / 'pip.log'
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
               FAKE_LOG=str(log))
    subprocess.run(['bash', MAKE, str(tmp_path / 'wh'), '--python-version',
                    '3.10', '--platform', 'manylinux2014_x86_64', '--torch',
                    'none'], cwd=ROOT, env=env, check=True,
                   capture_output=True, text=True)
    helper, sdist, wheels = log.read_text().splitlines()
    # the mmcv sdist: no binaries, setuptools<81 in the helper env
    assert helper.split()[-2:] == ['setuptools>=77,<81', 'wheel']
    assert '--no-binary :all: --no-build-isolation' in sdist
    # the wheels: binary only, for the target, with every older manylinux
    args = wheels.split()
    assert '--only-binary=:all:' in args and 'torch' not in wheels
    assert args[args.index('--python-version') + 1] == '3.10'
    platforms = [args[i + 1] for i, a in enumerate(args) if a == '--platform']
    assert platforms[0] == 'manylinux_2_17_x86_64'  # = manylinux2014
    assert set(platforms) == {f'manylinux_2_{m}_x86_64'
                              for m in range(5, 18)} | {
        'manylinux2014_x86_64', 'manylinux2010_x86_64', 'manylinux1_x86_64'}
    for build in ('setuptools>=77,<81', 'wheel', 'ninja'):
        assert build in args
    # mmcv's base requirements (not its extras), then mmum's
    reqs = (tmp_path / 'pip.log.reqs').read_text().split()
    assert reqs[:3] == ['addict', 'yapf', 'opencv-python>=3']
    assert 'mmengine==0.10.7' in reqs and 'pytest' in reqs
    assert 'ninja' not in reqs  # mmcv's [all] extra stays out

    # the default torch and a CUDA index go into the same resolve
    log.unlink()
    subprocess.run(['bash', MAKE, str(tmp_path / 'wh2'), '--torch-index',
                    'https://example.invalid/cu121'], cwd=ROOT, env=env,
                   check=True, capture_output=True, text=True)
    wheels = log.read_text().splitlines()[-1].split()
    assert 'torch==2.14.1' in wheels and 'torchvision==0.29.1' in wheels
    assert wheels[wheels.index('--extra-index-url') + 1] == \
        'https://example.invalid/cu121'
    assert 'manylinux_2_28_x86_64' in wheels  # the default platform

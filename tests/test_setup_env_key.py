"""tools/setup_env.sh keys its shared base environment on the flavour of
mmcv's ops (issue 25): the script's own lines up to the choice of the base
run with fake ``nvcc`` / ``nvidia-smi`` on PATH (nothing is installed), and
print the flavour and the key."""
import os
import os.path as osp
import stat
import subprocess

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, 'tools', 'setup_env.sh')
BASE_LINE = 'BASE="$CACHE/venvs/$KEY"'


def key_of(tmp_path, env, tools=('nvcc', )):
    """(flavour, key, variant) that setup_env.sh would use under ``env``,
    with fake ``tools`` first on PATH."""
    lines = open(SCRIPT).read().splitlines()
    cut = next(i for i, ln in enumerate(lines) if ln.strip() == BASE_LINE)
    # run from tools/ (the script finds the repo from its own path)
    dry = osp.join(ROOT, 'tools', f'.dry_{os.getpid()}_{tmp_path.name}.sh')
    with open(dry, 'w') as f:
        f.write('\n'.join(lines[:cut + 1] + [
            'fi', 'echo "$FLAVOUR|$KEY|$VARIANT"', 'exit 0']) + '\n')
    fake = tmp_path / ('bin_' + '_'.join(tools))
    fake.mkdir(exist_ok=True)
    for tool in tools:
        path = fake / tool
        path.write_text('#!/bin/sh\necho fake\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    # PATH: the fake tools, then a PATH without any real nvcc / nvidia-smi
    clean = [p for p in os.environ['PATH'].split(':')
             if not any(osp.exists(osp.join(p, t))
                        for t in ('nvcc', 'nvidia-smi'))]
    full = {k: v for k, v in os.environ.items()
            if k not in ('FORCE_CUDA', 'MMUM_MMCV_OPS', 'MMUM_TORCH_FROM')}
    full.update(env, PATH=':'.join([str(fake)] + clean),
                MMUM_VENV=str(tmp_path / 'no-venv'),
                MMUM_CACHE=str(tmp_path / 'cache'))
    try:
        out = subprocess.run(['bash', dry], env=full, capture_output=True,
                             text=True, timeout=60)
    finally:
        os.remove(dry)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1].split('|')


@pytest.mark.skipif(not osp.exists('/dev') or osp.exists('/dev/nvidia0'),
                    reason='a visible GPU makes every case CUDA here')
def test_base_key_depends_on_the_flavour(tmp_path):
    cpu = key_of(tmp_path, {}, tools=('nvcc', ))  # nvcc but no GPU
    assert cpu[0] == 'cpu' and cpu[2] == ''  # the CPU key as before
    forced = key_of(tmp_path, {'FORCE_CUDA': '1'})
    gpu = key_of(tmp_path, {}, tools=('nvcc', 'nvidia-smi'))
    assert forced[0] == gpu[0] == 'cuda' and forced[1] == gpu[1] != cpu[1]
    assert 'flavour=cuda' in gpu[2]
    # FORCE_CUDA=0 on a GPU machine, or no nvcc: CPU ops, the CPU key
    assert key_of(tmp_path, {'FORCE_CUDA': '0'},
                  tools=('nvcc', 'nvidia-smi'))[:2] == cpu[:2]
    assert key_of(tmp_path, {'FORCE_CUDA': '1'}, tools=())[:2] == cpu[:2]
    # without ops the flavour does not matter
    no_ops = key_of(tmp_path, {'MMUM_MMCV_OPS': '0', 'FORCE_CUDA': '1'})
    assert no_ops[0] == 'cpu' and no_ops[1] not in (cpu[1], gpu[1])


def test_failure_hint_names_the_variable_the_script_reads():
    text = open(SCRIPT).read()
    assert 'MMUM_CXX_STD' in text and 'MMCV_CXX_STD' not in text

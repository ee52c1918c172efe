"""One command that proves mmum's GPU path on a machine (issues 18, 25).

For a machine with torch (CUDA build) and a wheelhouse made by
``tools/make_wheelhouse.sh``; sized for at most 10 min on one modern GPU once
mmcv's wheel is built (the first install compiles mmcv's CUDA ops, cached in
``MMUM_CACHE``; its CUDA path has not run yet: no GPU where it was written)::

    python tools/analysis_tools/gpu_check.py --out gpu_check_out \
        --wheelhouse /path/to/wheelhouse            # --device cuda (default)

Stages (each reported PASS / FAIL / n/a in the summary printed last; the full
log, every subprocess's output included, is ``OUT/gpu_check.log``):

1. **install**: mmum's dependencies from the wheelhouse only into the
   throw-away venv ``OUT/venv`` through ``tools/setup_env.sh --wheelhouse``,
   reaching this python's torch (``MMUM_TORCH_FROM``). With CUDA, mmcv is
   built with its CUDA ops (``FORCE_CUDA=1``); without, without ops
   (``MMUM_MMCV_OPS=0``, seconds). The other stages then run in that venv;
   ``--skip-install`` runs them with this python as it is.
2. **amp fp16 / amp bf16**: one training step of every pre-training row
   (``AMP_ROWS``: UM-MAE Swin-T / PVT-S, GreenMIM Swin-B / Twins-L, LocalMIM,
   ViTFreeze ViT-B and Swin-T, SimMIM Swin-T / PVT-S / Swin-B / Twins-L),
   built by :mod:`mmum.utils.benchmark` as the Runner builds it, under
   mmengine's ``AmpOptimWrapper``: every loss finite, autocast on, and the
   loss scaler took a step (up to ``--amp-tries`` steps) with a finite scale.
3. **device = cpu**: each row's loss and gradients of one fp32 step on the
   device against the CPU, same weights, same masks and random draws (TF32
   off); on ``--device cpu`` both sides are the CPU (checks the path only).
4. **benchmark**: ``benchmark_pretrain.py`` on every pair (Swin-T, PVT-S,
   Swin-B, Twins-L, ViTFreeze ViT-B and Swin-T); on CUDA at the configs'
   per-GPU batch sizes in fp32 and AMP (``--amp both``).
5. **train + resume**: 30 iterations of ``configs/um_mae/swin_t_200e.py``
   through ``tools/train.py --amp`` on generated images, checkpoint at 15; a
   second run resumes there; its losses for 16..30 must equal the
   uninterrupted run's within ``--resume-rtol``.

The summary's ``mmcv ops`` line says whether mmcv's ops carry CUDA kernels
(``mmcv.ops.get_compiling_cuda_version()``). ``--device cpu`` runs every
stage small (tiny architectures, batch 2, 4 training iterations): this is how
the tests run it. There AMP means bf16 autocast (``AmpOptimWrapper`` built
past its CUDA assertion with torch's CPU ``GradScaler``), fp16 is *n/a* and
``tools/train.py --amp`` trains through ``mmum.CPUAmpOptimWrapper`` (bf16
on a CPU with native bf16, else fp32; reported so). ``--no-mmcv-ops``
refuses every import of ``mmcv._ext`` in this process and its subprocesses,
as an mmcv built with ``MMCV_WITH_OPS=0`` would (implied after an install
without ops).

Exit status 0 when no stage failed (n/a is not a failure), 1 otherwise.
"""
import argparse
import glob
import json
import math
import os
import os.path as osp
import platform
import subprocess
import sys
import time
import traceback
import warnings
from typing import Dict, List, Optional, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HERE = osp.abspath(__file__)
TRAIN_CFG = 'configs/um_mae/swin_t_200e.py'
# one row of mmum.utils.benchmark per pre-training algorithm and baseline
AMP_ROWS = ['ummae_swin_t', 'ummae_pvt_s', 'greenmim_swin_b',
            'greenmim_twins_l', 'localmim_vit_b', 'vitfreeze_vit_b@0.6',
            'vitfreeze_swin_t@0.8', 'simmim_swin_t', 'simmim_pvt_s',
            'simmim_swin_b', 'simmim_twins_l']
# every pair of the benchmark (UM-MAE's compact-positions ablation aside)
BENCH_ROWS = ['simmim_swin_t', 'ummae_swin_t', 'simmim_pvt_s', 'ummae_pvt_s',
              'simmim_swin_b', 'greenmim_swin_b', 'simmim_twins_l',
              'greenmim_twins_l', 'localmim_vit_b', 'vitfreeze_vit_b@0.8',
              'localmim_swin_t', 'vitfreeze_swin_t@0.8']
NO_OPS_ENV = 'MMUM_GPU_CHECK_NO_MMCV_OPS'

# device -> default settings ("smallest mode" on CPU); bench_batch None: the
# configs' per-GPU batch sizes
DEFAULTS = dict(
    cuda=dict(amp_batch=8, equal_batch=2, tiny=False, bench_batch=None,
              bench_warmup=2, bench_steps=5, train_iters=30, train_batch=64,
              workers=4, img=288),
    cpu=dict(amp_batch=2, equal_batch=1, tiny=True, bench_batch=1,
             bench_warmup=0, bench_steps=1, train_iters=4, train_batch=2,
             workers=0, img=64),
)


# ------------------------------------------------------------ mmcv ops guard
def block_mmcv_ops() -> None:
    """Make ``mmcv._ext`` (mmcv's compiled ops) absent for this process, as
    in an mmcv built with ``MMCV_WITH_OPS=0``: ``None`` in ``sys.modules``
    makes ``import mmcv._ext`` raise ModuleNotFoundError and
    ``importlib.util.find_spec`` return None (mmengine's
    ``mmcv_full_available`` then says False)."""
    if sys.modules.get('mmcv._ext') is not None:
        raise RuntimeError('--no-mmcv-ops: mmcv._ext was imported already')
    sys.modules['mmcv._ext'] = None


def mmcv_ops_state() -> str:
    import mmcv
    if not glob.glob(osp.join(osp.dirname(mmcv.__file__), '_ext*')):
        return f'absent (mmcv {mmcv.__version__} built without ops)'
    if 'mmcv._ext' in sys.modules and sys.modules['mmcv._ext'] is None:
        return (f'blocked (mmcv {mmcv.__version__} has ops; mmcv._ext made '
                'absent, as without ops)')
    from mmum.utils.benchmark import mmcv_ops_cuda
    return f'present (mmcv {mmcv.__version__} with ops: {mmcv_ops_cuda()})'


# Runs a script with the guard in place when the env variable asks for it:
#   python -c BOOT SCRIPT ARGS...
BOOT = ('import os, runpy, sys; sys.path.insert(0, {here!r}); '
        'import gpu_check as g; '
        '(os.environ.get({env!r}) == "1") and g.block_mmcv_ops(); '
        'sys.argv = sys.argv[1:]; '
        'runpy.run_path(sys.argv[0], run_name="__main__")').format(
            here=osp.dirname(HERE), env=NO_OPS_ENV)


# ------------------------------------------------------------------- logging
class Log:
    """Console + ``OUT/gpu_check.log``; ``detail`` goes to the file only."""

    def __init__(self, out: str):
        os.makedirs(out, exist_ok=True)
        self.path = osp.join(out, 'gpu_check.log')
        self.f = open(self.path, 'a', buffering=1)

    def __call__(self, msg: str = '') -> None:
        print(msg, flush=True)
        self.detail(msg)

    def detail(self, msg: str) -> None:
        self.f.write(msg + '\n')


def run(cmd: List[str], log: Log, env: Optional[dict] = None,
        timeout: float = 1200) -> str:
    """Run ``cmd`` from the repo root; its output goes to the log. Raises
    with the output's tail when it fails."""
    log.detail(f'$ {" ".join(cmd)}')
    full_env = dict(os.environ, **(env or {}))
    full_env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    log.detail(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f'exit {proc.returncode}: '
                           f'{" ".join(cmd[:4])} ...\n{proc.stdout[-3000:]}')
    return proc.stdout


def python_script(script: str, *args: str) -> List[str]:
    return [sys.executable, '-c', BOOT, osp.join(ROOT, script), *args]


# ------------------------------------------------------------------- stages
def stage_install(args, log: Log) -> str:
    """Install into OUT/venv from the wheelhouse; return the venv python."""
    if not args.wheelhouse:
        raise ValueError('--wheelhouse DIR is needed to install (or pass '
                         '--skip-install to use this python as it is)')
    import torch
    venv = osp.join(args.out, 'venv')
    env = dict(MMUM_VENV=venv, MMUM_SHARED_BASE='0',
               MMUM_TORCH_FROM=sys.executable, PIP_NO_INDEX='1')
    if args.with_ops:  # mmcv with CUDA ops; its wheel cached in MMUM_CACHE
        env.update(MMUM_MMCV_OPS='1', FORCE_CUDA='1')
        log(f'building mmcv with CUDA ops for torch {torch.__version__} '
            '(once; the wheel is cached in MMUM_CACHE)')
    else:
        env.update(MMUM_MMCV_OPS='0', MMUM_CACHE=osp.join(args.out, 'cache'))
    run(['bash', osp.join(ROOT, 'tools', 'setup_env.sh'), '--wheelhouse',
         args.wheelhouse], log, env)
    return osp.join(venv, 'bin', 'python')


def bench_options(args, batch_size: int):
    from mmum.utils.benchmark import options
    return options(device=args.device, tiny=args.tiny, batch_size=batch_size)


def amp_wrapper(optimizer, dtype: str, device: str,
                clip_grad: Optional[dict] = None):
    """mmengine's ``AmpOptimWrapper`` around ``optimizer``. On CPU it is
    built past its CUDA-only assertion and given torch's CPU GradScaler
    (mmengine would build a CUDA one, which disables itself)."""
    from unittest import mock

    import torch
    from mmengine.optim import AmpOptimWrapper
    if device.startswith('cuda'):
        return AmpOptimWrapper(optimizer=optimizer, dtype=dtype,
                               loss_scale='dynamic', clip_grad=clip_grad)
    mod = 'mmengine.optim.optimizer.amp_optimizer_wrapper'
    with mock.patch(f'{mod}.is_cuda_available', return_value=True), \
            mock.patch(f'{mod}.GradScaler',
                       lambda **kw: torch.amp.GradScaler('cpu', **kw)):
        return AmpOptimWrapper(optimizer=optimizer, dtype=dtype,
                               loss_scale='dynamic', clip_grad=clip_grad)


def amp_step(name: str, dtype: str, args) -> str:
    """One training step of row ``name`` under AMP ``dtype``; returns the
    result line, raises AssertionError on a failed check."""
    import torch

    from mmum.utils import benchmark as bm
    row = bm.build_row(name, bench_options(args, args.amp_batch))
    model, plain = row['model'], row['optim']
    clip = None  # the config's gradient clipping, carried over
    if plain.clip_grad_kwargs:
        clip = dict(plain.clip_grad_kwargs,
                    type=plain.grad_name[len('grad_'):])
    optim = amp_wrapper(plain.optimizer, dtype, args.device, clip)
    row['optim'] = optim
    scaler = optim.loss_scaler
    params = [p for p in model.parameters() if p.requires_grad]
    # autocast really on: the first linear layer's output dtype
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    seen = []
    hook = linear.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype) if not seen else None)
    scales = [float(scaler.get_scale())]
    for attempt in range(1, args.amp_tries + 1):
        before = [p.detach().clone() for p in params]
        log_vars = model.train_step(bm.make_batch(row), optim)
        losses = {k: float(torch.as_tensor(v).detach())
                  for k, v in log_vars.items() if k.startswith('loss')}
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            raise AssertionError(f'{name}: non-finite losses {bad}')
        scales.append(float(scaler.get_scale()))
        stepped = any(not torch.equal(a, p.detach())
                      for a, p in zip(before, params))
        if stepped:
            break
    hook.remove()
    del row, model, optim, plain
    if seen != [getattr(torch, dtype)]:
        raise AssertionError(f'{name}: autocast off? a linear layer gave '
                             f'{seen[:1]}, not torch.{dtype}')
    if not stepped:
        raise AssertionError(
            f'{name}: the scaler skipped all {args.amp_tries} steps '
            f'(scale {" -> ".join(f"{s:g}" for s in scales)})')
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise AssertionError(f'{name}: loss scale went bad: {scales}')
    return (f'loss {losses["loss"]:.4f}, linear out {dtype}, step taken '
            f'at try {attempt}, scale '
            f'{" -> ".join(f"{s:g}" for s in scales)}')


def stage_amp(args, dtype: str, log: Log) -> Tuple[str, str]:
    import torch
    if not args.device.startswith('cuda') and dtype == 'float16':
        return ('n/a', 'fp16 autocast is not applicable on CPU (mmengine\'s '
                'autocast allows only bfloat16 there)')
    if args.device.startswith('cuda') and dtype == 'bfloat16' and \
            not torch.cuda.is_bf16_supported():
        return ('n/a', f'{torch.cuda.get_device_name()} has no bfloat16')
    from mmum.utils.benchmark import ROWS
    failed = []
    for name in AMP_ROWS:
        try:
            line = amp_step(name, dtype, args)
            log(f'  {dtype} {ROWS[name]["method"]:>13} '
                f'{ROWS[name]["arch"]:7}: {line}')
        except Exception as e:  # noqa: BLE001  reported, the next row runs
            log.detail(traceback.format_exc())
            log(f'  amp {dtype} {name}: FAILED: {e}')
            failed.append(name)
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()
    how = ('CUDA autocast, CUDA GradScaler' if args.device.startswith('cuda')
           else 'CPU autocast, CPU GradScaler')
    n = len(AMP_ROWS)
    if failed:
        return ('FAIL', f'{n - len(failed)}/{n} rows ({how}); failed: '
                f'{", ".join(failed)}')
    return ('PASS', f'{n}/{n} rows, losses finite, scaler stepped ({how}'
            f'{", tiny archs" if args.tiny else ""}, batch {args.amp_batch})')


def stage_equal(args, log: Log) -> Tuple[str, str]:
    """Each AMP row's fp32 step on the device against the CPU."""
    import torch

    from mmum.utils import benchmark as bm
    failed, worst = [], (0., 0.)
    for name in AMP_ROWS:
        try:
            d = bm.device_equality(name, bench_options(args, args.equal_batch))
            rel = (d['loss_diff'] / max(abs(d['loss']), 1e-12),
                   d['grad_diff'] / max(d['grad_max'], 1e-12))
            worst = tuple(map(max, worst, rel))
            ok = rel[0] <= args.equal_rtol and rel[1] <= args.equal_rtol
            log(f'  {bm.ROWS[name]["method"]:>13} {bm.ROWS[name]["arch"]:7}: '
                f'loss {d["loss"]:.5f}, rel. diff {rel[0]:.1e}, gradients '
                f'{rel[1]:.1e} of the largest' + ('' if ok else ' TOO LARGE'))
            if not ok:
                failed.append(name)
        except Exception as e:  # noqa: BLE001  reported, the next row runs
            log.detail(traceback.format_exc())
            log(f'  {name}: FAILED: {type(e).__name__}: {e}'[:500])
            failed.append(name)
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()
    n = len(AMP_ROWS)
    what = (f'{n - len(failed)}/{n} rows, fp32, batch {args.equal_batch}: '
            f'largest rel. loss diff {worst[0]:.1e}, gradient diff '
            f'{worst[1]:.1e} of the largest (tol {args.equal_rtol:g})')
    if not args.device.startswith('cuda'):
        what += '; both sides on the CPU (the path only)'
    if failed:
        return ('FAIL', what + f'; failed: {", ".join(failed)}')
    return ('PASS', what)


def stage_bench(args, log: Log) -> Tuple[str, str]:
    cmd = python_script(
        'tools/analysis_tools/benchmark_pretrain.py', '--device', args.device,
        *(['--batch-size', str(args.bench_batch)] if args.bench_batch else
          []), '--warmup', str(args.bench_warmup), '--steps',
        str(args.bench_steps), '--methods', *BENCH_ROWS, '--json',
        osp.join(args.out, 'benchmark.json'),
        *(['--tiny'] if args.tiny else ['--amp', 'both']))
    # the configs' batches (up to 512 images) in fp32 and AMP: let the
    # caching allocator grow segments instead of fragmenting
    env = dict(args.child_env,
               PYTORCH_CUDA_ALLOC_CONF='expandable_segments:True')
    out = run(cmd, log, env=env)
    lines = out.splitlines()  # the tables and everything under them
    first = next((i for i, ln in enumerate(lines) if ln.startswith('|')), 0)
    print('\n'.join(lines[first:]), flush=True)
    with open(osp.join(args.out, 'benchmark.json')) as f:
        rows = json.load(f)
    if sorted(set(r['name'] for r in rows)) != sorted(BENCH_ROWS):
        return ('FAIL', f'rows {[r["name"] for r in rows]}')
    mem = 'torch.cuda.max_memory_allocated' if args.device.startswith(
        'cuda') else 'CPU allocator via the profiler'
    batch = args.bench_batch or "the configs' per-GPU"
    modes = ', '.join(dict.fromkeys(r['mode'] for r in rows))
    return ('PASS', f'{len(rows)} rows ({modes}) at batch {batch} (peak '
            f'MiB: {mem}); tables above and in {args.out}/benchmark.json')


def make_images(root: str, num: int, size: int) -> str:
    """mmpretrain's ImageNet layout with ``num`` random images:
    ``root/train/*.png`` and ``root/meta/train.txt``."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    os.makedirs(osp.join(root, 'train'), exist_ok=True)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    lines = []
    for i in range(num):
        # smooth random images (a low-res noise field upsampled) so the
        # reconstruction loss is not pure noise
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(osp.join(root, 'train', f'{i}.png'), img)
        lines.append(f'{i}.png 0')
    with open(osp.join(root, 'meta', 'train.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return root


def logged_losses(work: str) -> Dict[int, float]:
    """Iteration -> loss of the LoggerHook's json logs in ``work``."""
    rows = {}
    for path in sorted(glob.glob(osp.join(work, '2*', 'vis_data',
                                          '2*.json'))):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if 'loss' in row:
                    rows[row['iter']] = row['loss']
    return rows


def stage_train(args, log: Log) -> Tuple[str, str]:
    n = args.train_iters
    half = n // 2
    data = make_images(osp.join(args.out, 'data'),
                       max(2 * args.train_batch, 8), args.img)
    opts = [
        f'train_dataloader.dataset.data_root={data}',
        f'train_dataloader.batch_size={args.train_batch}',
        f'train_dataloader.num_workers={args.workers}',
        f'train_dataloader.persistent_workers={args.workers > 0}',
        'train_cfg._delete_=True', 'train_cfg.type=IterBasedTrainLoop',
        f'train_cfg.max_iters={n}', 'default_hooks.checkpoint.by_epoch=False',
        f'default_hooks.checkpoint.interval={half}',
        'default_hooks.logger.interval=1', 'log_processor.by_epoch=False',
        'log_processor.window_size=1', 'optim_wrapper.accumulative_counts=1'
    ]
    full, resumed = (osp.join(args.out, 'train', d)
                     for d in ('full', 'resumed'))
    t0 = time.time()
    out = run(python_script('tools/train.py', TRAIN_CFG, '--amp',
                            '--work-dir', full, '--cfg-options', *opts),
              log, env=args.child_env)
    ckpt = osp.join(full, f'iter_{half}.pth')
    if not osp.exists(ckpt):
        return ('FAIL', f'no checkpoint {ckpt}')
    run(python_script('tools/train.py', TRAIN_CFG, '--amp', '--work-dir',
                      resumed, '--resume', ckpt, '--cfg-options', *opts),
        log, env=args.child_env)
    a, b = logged_losses(full), logged_losses(resumed)
    if sorted(a) != list(range(1, n + 1)):
        return ('FAIL', f'uninterrupted run logged iterations {sorted(a)}')
    if sorted(b) != list(range(half + 1, n + 1)):
        return ('FAIL', f'resumed run logged iterations {sorted(b)}, '
                f'expected {half + 1}..{n}')
    bad = [k for k in a.values() if not math.isfinite(k)]
    rel = max(abs(b[i] - a[i]) / max(abs(a[i]), 1e-12) for i in b)
    log.detail('iter  uninterrupted  resumed')
    for i in sorted(a):
        log.detail(f'{i:4d}  {a[i]:.6f}  {b.get(i, float("nan")):.6f}')
    # without CUDA, mmum.CPUAmpOptimWrapper logs which precision it took
    precision = ('bf16: tools/train.py --amp on a CPU with native bf16'
                 if 'training in bf16' in out else
                 'fp32: tools/train.py --amp on a CPU without native bf16'
                 if 'training in fp32' in out else 'AMP fp16')
    what = (f'{n} iters ({precision}), resumed from iter_{half}.pth: max '
            f'rel. loss diff {rel:.2e} (tol {args.resume_rtol:g}), '
            f'{time.time() - t0:.0f} s')
    if bad or rel > args.resume_rtol:
        return ('FAIL', what + (f'; non-finite losses {bad}' if bad else ''))
    return ('PASS', what)


# --------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2])
    p.add_argument('--out', required=True,
                   help='folder for the full log (gpu_check.log), the venv, '
                   'generated images and work dirs')
    p.add_argument('--device', default='cuda', help='cuda (default) or cpu')
    p.add_argument('--wheelhouse', help='wheelhouse to install from')
    p.add_argument('--skip-install', action='store_true',
                   help='use this python\'s packages as they are')
    p.add_argument('--no-mmcv-ops', action='store_true',
                   help='refuse imports of mmcv._ext (mmcv without ops)')
    p.add_argument('--tiny', action='store_true', default=None,
                   help='tiny architectures for the AMP steps and the '
                   'benchmark (default on CPU)')
    p.add_argument('--amp-batch', type=int)
    p.add_argument('--amp-tries', type=int, default=5,
                   help='steps tried until the loss scaler takes one')
    p.add_argument('--equal-batch', type=int,
                   help='batch of the device = cpu comparison')
    p.add_argument('--equal-rtol', type=float, default=1e-3,
                   help='largest relative loss difference and gradient '
                   'difference (of the largest gradient), device vs CPU')
    p.add_argument('--bench-batch', type=int,
                   help='benchmark batch (CUDA default: the configs\' '
                   'per-GPU batch sizes)')
    p.add_argument('--bench-warmup', type=int)
    p.add_argument('--bench-steps', type=int)
    p.add_argument('--train-iters', type=int,
                   help='iterations of the train run (resumed at half)')
    p.add_argument('--train-batch', type=int)
    p.add_argument('--workers', type=int, help='dataloader workers')
    p.add_argument('--img', type=int, help='side of the generated images')
    p.add_argument('--resume-rtol', type=float, default=1e-2,
                   help='largest relative loss difference after resume')
    p.add_argument('--stages', nargs='+',
                   default=['amp', 'equal', 'bench', 'train'],
                   choices=['amp', 'equal', 'bench', 'train'])
    args = p.parse_args(argv)
    kind = 'cuda' if args.device.startswith('cuda') else 'cpu'
    if kind == 'cpu' and args.device != 'cpu':
        p.error(f'--device {args.device!r}: use cuda[:N] or cpu')
    for k, v in DEFAULTS[kind].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.train_iters < 2 or args.train_iters % 2:
        p.error(f'--train-iters {args.train_iters}: an even number >= 2')
    args.out = osp.abspath(args.out)
    # mmcv with CUDA ops where CUDA is (built once), else without ops
    args.with_ops = kind == 'cuda' and not args.no_mmcv_ops
    if args.wheelhouse:
        args.wheelhouse = osp.abspath(args.wheelhouse)
    return args


def header(args) -> str:
    import torch
    if args.device.startswith('cuda'):
        dev = (f'{torch.cuda.get_device_name(args.device)}, CUDA '
               f'{torch.version.cuda}')
    else:
        dev = f'CPU ({platform.processor() or platform.machine()}, ' \
              f'{os.cpu_count()} cores)'
    return (f'device {args.device}: {dev}; torch {torch.__version__} '
            f'({osp.dirname(torch.__file__)}); python {sys.executable}')


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    log = Log(args.out)
    results = {}
    if not args.skip_install:
        log(f'== gpu_check {time.strftime("%Y-%m-%d %H:%M:%S")}: install '
            f'from {args.wheelhouse}')
        t0 = time.time()
        try:
            py = stage_install(args, log)
        except Exception as e:  # noqa: BLE001
            log.detail(traceback.format_exc())
            log(f'install FAILED: {e}')
            return summary(args, log, {'install': ('FAIL', str(e)[:300])})
        log(f'installed into {osp.dirname(osp.dirname(py))} in '
            f'{time.time() - t0:.0f} s; the checks now run there')
        log.f.close()
        proc = subprocess.run(
            [py, HERE, *argv, '--skip-install',
             *([] if args.with_ops else ['--no-mmcv-ops'])],
            env=dict(os.environ, MMUM_GPU_CHECK_INSTALLED=(
                f'{time.time() - t0:.0f} s into '
                f'{osp.dirname(osp.dirname(py))}, torch of {sys.executable}')
            ))
        return proc.returncode

    if args.no_mmcv_ops:
        block_mmcv_ops()
    args.child_env = {NO_OPS_ENV: '1' if args.no_mmcv_ops else '0'}
    import torch
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        log(f'--device {args.device}: this torch ({torch.__version__}) sees '
            'no CUDA device; use --device cpu for the CPU run')
        return 1
    if 'MMUM_GPU_CHECK_INSTALLED' in os.environ:
        results['install'] = ('PASS', os.environ['MMUM_GPU_CHECK_INSTALLED'])
    else:
        results['install'] = ('skipped', '--skip-install: this python as '
                              'it is')
    log(f'== gpu_check {time.strftime("%Y-%m-%d %H:%M:%S")}: {header(args)}')
    import mmum  # noqa: F401  (registers the scope, compat shims)
    from mmengine.logging import MMLogger

    # quiet the optimizer constructors' per-parameter INFO lines
    MMLogger.get_instance('gpu_check', log_level='WARNING')
    stages = [('amp fp16', 'amp', lambda: stage_amp(args, 'float16', log)),
              ('amp bf16', 'amp', lambda: stage_amp(args, 'bfloat16', log)),
              ('device = cpu', 'equal', lambda: stage_equal(args, log)),
              ('benchmark', 'bench', lambda: stage_bench(args, log)),
              ('train+resume', 'train', lambda: stage_train(args, log))]
    for label, key, fn in stages:
        if key not in args.stages:
            continue
        log(f'-- {label}')
        t0 = time.time()
        try:
            status, what = fn()
        except Exception as e:  # noqa: BLE001  reported, the next stage runs
            log.detail(traceback.format_exc())
            status, what = 'FAIL', f'{type(e).__name__}: {e}'[:500]
        results[label] = (status, what)
        log(f'   {status} ({time.time() - t0:.0f} s): {what}')
    results['mmcv ops'] = ('info', mmcv_ops_state())
    return summary(args, log, results)


def summary(args, log: Log, results: dict) -> int:
    failed = [k for k, (s, _) in results.items() if s == 'FAIL']
    na = [k for k, (s, _) in results.items() if s == 'n/a']
    log('')
    log(f'==== gpu_check summary (device {args.device}; full log: '
        f'{log.path}) ====')
    for k, (s, what) in results.items():
        log(f'{k:13}: {s}: {what}' if s != 'info' else f'{k:13}: {what}')
    verdict = 'FAIL' if failed else 'PASS'
    extra = []
    if failed:
        extra.append('failed: ' + ', '.join(failed))
    if na:
        extra.append('n/a: ' + ', '.join(na))
    log(f'{"RESULT":13}: {verdict}' + (f' ({"; ".join(extra)})'
                                       if extra else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

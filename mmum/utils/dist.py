"""Distributed training without GPUs.

mmengine's launchers (``init_dist``) call ``torch.cuda.set_device``, which
fails on a machine without CUDA, and the Runner wraps the model in DDP with
``device_ids=[LOCAL_RANK]``, which is only valid for GPU modules. When no GPU
is present, :func:`setup_cpu_distributed` initialises the process group with
the ``gloo`` backend itself (the Runner then skips ``init_dist`` because a
process group already exists) and asks for a CPU DDP wrapper.
"""
import datetime
import os
import subprocess

import torch
import torch.distributed as torch_dist

_LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def _env_from_launcher(launcher: str) -> None:
    """Fill ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` the way
    mmengine does for the slurm and mpi launchers (torchrun sets them)."""
    env = os.environ
    if launcher == 'slurm':
        env['RANK'] = env['SLURM_PROCID']
        env['WORLD_SIZE'] = env['SLURM_NTASKS']
        env['LOCAL_RANK'] = env.get('SLURM_LOCALID', '0')
        if 'MASTER_ADDR' not in env:
            env['MASTER_ADDR'] = subprocess.getoutput(
                f"scontrol show hostname {env['SLURM_NODELIST']} | head -n1")
    elif launcher == 'mpi':
        env['RANK'] = env['OMPI_COMM_WORLD_RANK']
        env['WORLD_SIZE'] = env['OMPI_COMM_WORLD_SIZE']
        env['LOCAL_RANK'] = env['OMPI_COMM_WORLD_LOCAL_RANK']
    missing = [k for k in ('RANK', 'WORLD_SIZE') if k not in env]
    if missing:
        raise RuntimeError(
            f'launcher={launcher!r} needs the environment variables '
            f'{missing}; start the job with tools/dist_train.sh (torchrun) '
            f'or use --launcher none for a single process.')
    env.setdefault('MASTER_ADDR', '127.0.0.1')
    env.setdefault('MASTER_PORT', '29500')


def setup_cpu_distributed(cfg, launcher: str = 'none') -> bool:
    """Prepare ``cfg`` for distributed training on CPUs (gloo).

    Does nothing (returns False) when ``launcher`` is ``'none'`` or CUDA is
    available, so mmengine's own GPU path is used unchanged. Otherwise it

    * initialises the default process group with ``gloo`` (timeout from
      ``env_cfg.dist_cfg.timeout`` in seconds, if set), unless one exists;
    * sets ``model_wrapper_cfg`` to ``MMDistributedDataParallel`` with
      ``device_ids=None`` (CPU modules), keeping ``find_unused_parameters``
      from the config if it asks for it.

    Args:
        cfg (mmengine.Config): The full config; edited in place.
        launcher (str): One of ``'none'``, ``'pytorch'``, ``'slurm'``,
            ``'mpi'``.

    Returns:
        bool: Whether the CPU distributed set-up was applied.
    """
    if launcher not in _LAUNCHERS:
        raise ValueError(f'launcher must be one of {_LAUNCHERS}, '
                         f'got {launcher!r}')
    if launcher == 'none' or torch.cuda.is_available():
        return False

    if not torch_dist.is_initialized():
        _env_from_launcher(launcher)
        kwargs = {}
        dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
        timeout = dist_cfg.get('timeout')
        if timeout is not None:
            kwargs['timeout'] = datetime.timedelta(seconds=timeout)
        torch_dist.init_process_group(
            backend='gloo',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
            **kwargs)
    env_cfg = cfg.get('env_cfg') or {}
    env_cfg['dist_cfg'] = dict(env_cfg.get('dist_cfg') or {}, backend='gloo')
    cfg['env_cfg'] = env_cfg

    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        wrapper = dict(type='MMDistributedDataParallel',
                       broadcast_buffers=False)
        if cfg.get('find_unused_parameters'):
            wrapper['find_unused_parameters'] = True
    if wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel', 'DistributedDataParallel'):
        wrapper['device_ids'] = None
    cfg['model_wrapper_cfg'] = wrapper
    return True


def cpu_fallback_amp(cfg) -> None:
    """Switch ``AmpOptimWrapper`` to ``mmum.CPUAmpOptimWrapper`` when CUDA is
    absent.

    mmengine's ``AmpOptimWrapper`` asserts that a CUDA/NPU/MLU device exists,
    so an AMP config (``--amp`` or ``optim_wrapper.type='AmpOptimWrapper'``)
    could not even start on a CPU machine. The CPU wrapper
    (:mod:`mmum.engine.optimizers.cpu_amp`) trains in bf16 autocast where
    the CPU has native bf16 and in fp32 elsewhere, and logs which and why
    when it is built. With CUDA nothing changes.
    """
    optim_wrapper = cfg.get('optim_wrapper')
    if torch.cuda.is_available() or optim_wrapper is None:
        return
    if optim_wrapper.get('type') == 'AmpOptimWrapper':
        optim_wrapper['type'] = 'mmum.CPUAmpOptimWrapper'

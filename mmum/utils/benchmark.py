"""Measuring pre-training steps: the rows of ``benchmark_pretrain.py`` and
``gpu_check.py`` (issues 8, 18, 25), as mmdet keeps its benchmarks in
``mmdet/utils/benchmark.py`` under a thin ``tools/analysis_tools`` CLI.

A *row* is one pre-training config (UM-MAE, GreenMIM, LocalMIM / ViTFreeze or
a SimMIM baseline) built as mmengine's ``Runner`` builds it: the top-level
``data_preprocessor`` merged into the model (mean/std, BGR -> RGB), the
model's ``init_weights``, the config's optimizer wrapper. Its batches are
synthetic 0-255 images through the config's own masking transforms,
``PackInputs`` and collate function. Only the batch size, the resolution and
(``tiny``) the architecture's width and depth are overridden.

A row runs in one *mode*: fp32, or AMP (``amp``: the configs'
``AmpOptimWrapper`` in fp16 on CUDA; bf16 autocast on CPU), eager or with its
forward and loss compiled (``compiled``: ``torch.compile`` of the model's
forward, the optimizer step outside). The modes of one row share its model
and optimizer, so several modes cost one model's memory.
"""
import copy
import ctypes
import os
import os.path as osp
import platform
import re
import statistics
import tempfile
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.dataset import default_collate, pseudo_collate
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SIMMIM_SWIN_B = ('mmpretrain::simmim/'
                 'simmim_swin-base-w6_8xb256-amp-coslr-100e_in1k-192px.py')
SIMMIM_SWIN_L = ('mmpretrain::simmim/'
                 'simmim_swin-large-w12_16xb128-amp-coslr-800e_in1k-192px.py')
VITFREEZE_POINTS = (0.6, 0.8, 0.95)  # schedule fractions of ViTFreeze rows
COLLATE = dict(default_collate=default_collate, pseudo_collate=pseudo_collate)


def _row(method, arch, config, img, family, ref=None, targets=None, **extra):
    return dict(method=method, arch=arch, config=config, img=img,
                family=family, ref=ref, targets=targets or {}, **extra)


GREEN_TARGETS = dict(time=2.7, mem=1 / 0.3, grouping=2.0)
# name -> how to build the row; ``ref`` names the row the ratios divide by
ROWS = {
    'simmim_swin_t': _row('SimMIM', 'Swin-T',
                          'configs/simmim/swin_t_256_200e.py', 256, 'simmim'),
    'ummae_swin_t': _row('UM-MAE', 'Swin-T', 'configs/um_mae/swin_t_200e.py',
                         256, 'ummae', ref='simmim_swin_t',
                         targets=dict(time=2.5, mem=3.0, enc_flops=3.8)),
    # the ablation of issue 13: offsets / sin-cos table on the compact grid
    'ummae_swin_t_compact': _row('UM-MAE compact pos.', 'Swin-T',
                                 'configs/um_mae/swin_t_200e.py', 256,
                                 'ummae', ref='simmim_swin_t',
                                 positions='compact'),
    'simmim_pvt_s': _row('SimMIM', 'PVT-S', 'configs/simmim/pvt_s_256_200e.py',
                         256, 'simmim'),
    'ummae_pvt_s': _row('UM-MAE', 'PVT-S', 'configs/um_mae/pvt_s_200e.py', 256,
                        'ummae', ref='simmim_pvt_s',
                        targets=dict(time=2.0, mem=2.0)),
    'ummae_pvt_s_compact': _row('UM-MAE compact pos.', 'PVT-S',
                                'configs/um_mae/pvt_s_200e.py', 256, 'ummae',
                                ref='simmim_pvt_s', positions='compact'),
    'simmim_swin_b': _row('SimMIM', 'Swin-B', SIMMIM_SWIN_B, 224, 'simmim',
                          window=7),
    'greenmim_swin_b': _row('GreenMIM', 'Swin-B',
                            'configs/green_mim/swin_b_800e.py', 224,
                            'greenmim', ref='simmim_swin_b',
                            targets=GREEN_TARGETS),
    'simmim_swin_l': _row('SimMIM', 'Swin-L', SIMMIM_SWIN_L, 224, 'simmim',
                          window=14),
    'greenmim_swin_l': _row('GreenMIM', 'Swin-L',
                            'configs/green_mim/swin_l_800e.py', 224,
                            'greenmim', ref='simmim_swin_l',
                            targets=GREEN_TARGETS),
    'simmim_twins_l': _row('SimMIM', 'Twins-L',
                           'configs/simmim/twins_l_224_800e.py', 224,
                           'simmim'),
    'greenmim_twins_l': _row('GreenMIM', 'Twins-L',
                             'configs/green_mim/twins_l_800e.py', 224,
                             'greenmim', ref='simmim_twins_l',
                             targets=GREEN_TARGETS),
    'localmim_vit_b': _row('LocalMIM', 'ViT-B',
                           'configs/vitfreeze/local_mim_vit_b_100e.py', 224,
                           'localmim'),
    **{
        f'vitfreeze_vit_b@{t}': _row(f'ViTFreeze@{t}', 'ViT-B',
                                     'configs/vitfreeze/vit_b_100e.py', 224,
                                     'localmim', ref='localmim_vit_b',
                                     freeze_at=t)
        for t in VITFREEZE_POINTS
    },
    # ViTFreeze on UM-MAE's compact Swin-T input, unfrozen and at 80 %
    'localmim_swin_t': _row('LocalMIM', 'Swin-T',
                            'configs/vitfreeze/swin_t_100e.py', 256,
                            'localmim_compact'),
    'vitfreeze_swin_t@0.8': _row('ViTFreeze@0.8', 'Swin-T',
                                 'configs/vitfreeze/swin_t_100e.py', 256,
                                 'localmim_compact', ref='localmim_swin_t',
                                 freeze_at=0.8),
}
# rows timed together (interleaved), in table order
PAIRS = [['simmim_swin_t', 'ummae_swin_t', 'ummae_swin_t_compact'],
         ['simmim_pvt_s', 'ummae_pvt_s', 'ummae_pvt_s_compact'],
         ['simmim_swin_b', 'greenmim_swin_b'],
         ['simmim_swin_l', 'greenmim_swin_l'],
         ['simmim_twins_l', 'greenmim_twins_l'],
         ['localmim_vit_b'] + [f'vitfreeze_vit_b@{t}'
                               for t in VITFREEZE_POINTS],
         ['localmim_swin_t', 'vitfreeze_swin_t@0.8']]
OPTIONAL = {  # rows run only with their flag (or named in ``methods``)
    'swin_l': ('simmim_swin_l', 'greenmim_swin_l'),
    'twins_l': ('simmim_twins_l', 'greenmim_twins_l'),
    'vitfreeze_swin': ('localmim_swin_t', 'vitfreeze_swin_t@0.8'),
}

# tiny architectures (smoke tests): same code paths, little work
TINY_SWIN = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
TINY_PVT = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                num_heads=[1, 1, 2, 4], mlp_ratios=[4, 4, 4, 4])
TINY_TWINS = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8], patch_sizes=[4, 2, 2, 2],
                  strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
                  sr_ratios=[8, 4, 2, 1], window_sizes=[7, 7, 7, 7])
TINY_VIT = dict(embed_dims=64, num_layers=12, num_heads=2,
                feedforward_channels=128)
TINY_DECODER = dict(decoder_embed_dim=64, decoder_num_heads=4)


def options(**kwargs) -> SimpleNamespace:
    """The settings every function here reads (a parsed command line has
    them): ``device``, ``batch_size`` (None: 2 on CPU, the config's per-GPU
    batch on CUDA), ``img_size`` (None: the row's), ``tiny``, ``seed``,
    ``fused_optim``, ``warmup``, ``steps``."""
    opts = dict(device='cpu', batch_size=None, img_size=None, tiny=False,
                seed=0, fused_optim=False, warmup=3, steps=5)
    unknown = set(kwargs) - set(opts)
    if unknown:
        raise TypeError(f'unknown options {sorted(unknown)}; valid: '
                        f'{sorted(opts)}')
    return SimpleNamespace(**dict(opts, **kwargs))


def is_cuda(opts) -> bool:
    return str(opts.device).startswith('cuda')


# ---------------------------------------------------------------- building
def _pipeline_set(pipeline, type_, **kwargs):
    for t in pipeline:
        if t['type'].split('.')[-1] == type_:
            t.update(kwargs)


def _is_twins(backbone_cfg) -> bool:
    return backbone_cfg.type.split('.')[-1] in ('GreenTwins', 'SimMIMSVT')


def load_config(name: str, opts) -> Config:
    """Row ``name``'s config with ``opts``' overrides (resolution, tiny
    architecture, one optimizer step per ``train_step``, fp32 optimizer
    wrapper: the modes are set by :func:`build_row`)."""
    if name not in ROWS:
        raise ValueError(f'unknown row {name!r}; choose from {list(ROWS)}')
    spec = ROWS[name]
    path = spec['config']
    if path.startswith('mmpretrain::'):
        import mmpretrain
        path = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'configs',
                        path[len('mmpretrain::'):])
    else:
        path = osp.join(ROOT, path)
    cfg = Config.fromfile(path)
    img = opts.img_size or spec['img']
    model, family = cfg.model, spec['family']
    bb = model.backbone
    pipeline = copy.deepcopy(cfg.train_dataloader.dataset.pipeline)
    _pipeline_set(pipeline, 'RandomResizedCrop', scale=img)
    _pipeline_set(pipeline, 'SimMIMMaskGenerator', input_size=img)
    if family in ('ummae', 'localmim_compact'):  # the compact half-size image
        bb.img_size = img // 2
    if family == 'ummae':
        model.neck.num_patches = (img // model.patch_size)**2
        if 'positions' in spec:  # 'original' (the configs) or 'compact'
            bb.positions = spec['positions']
    elif family == 'greenmim':
        model.neck.num_patches = (img // model.mask_unit)**2
    if family not in ('ummae', 'localmim_compact') and not _is_twins(bb):
        bb.img_size = img  # (SVT takes any size)
    if spec['config'].startswith('mmpretrain::'):
        # as mmum's pre-training configs (the GreenMIM side of the pair):
        # the same updates, one param group per set of options
        cfg.optim_wrapper.constructor = \
            'mmum.MergedGroupsOptimWrapperConstructor'
    if 'window' in spec:  # SimMIM Swin-B/L from mmpretrain's 192-px recipe
        # a stage map smaller than the window is one window of the map's
        # size, as in GreenMIM's Swin and the official Swin/SimMIM code;
        # mmpretrain's pad_small_map would pad a 7x7 map to 14x14
        bb.stage_cfgs = [
            dict(block_cfgs=dict(window_size=min(spec['window'],
                                                 img // 2**(i + 2))))
            for i in range(4)
        ]
        bb.pad_small_map = False
    if opts.tiny:
        _tiny(cfg, family)
    ow = cfg.optim_wrapper
    ow.pop('accumulative_counts', None)  # one optimizer step per train_step
    cfg.amp_optim_wrapper = dict(type='AmpOptimWrapper', dtype='float16',
                                 loss_scale='dynamic')
    if 'Amp' in ow.get('type', ''):  # the config's own AMP settings
        cfg.amp_optim_wrapper.update(
            {k: ow.pop(k) for k in ('dtype', 'loss_scale') if k in ow})
    ow.type = 'OptimWrapper'
    if opts.fused_optim and ow.optimizer.type.split('.')[-1] in ('Adam',
                                                                   'AdamW'):
        ow.optimizer.fused = True
    cfg.bench_pipeline = pipeline
    return cfg


def _tiny(cfg: Config, family: str) -> None:
    model = cfg.model
    bb = model.backbone
    if _is_twins(bb):
        bb.arch, width = TINY_TWINS, TINY_TWINS['embed_dims'][-1]
    elif bb.type.endswith('PVT'):
        bb.arch, width = TINY_PVT, TINY_PVT['embed_dims'][-1]
    elif 'ViT' in bb.type:
        bb.arch, width = TINY_VIT, None
        model.neck.update(embed_dims=32, num_heads=2)
    else:
        bb.arch, width = TINY_SWIN, TINY_SWIN['embed_dims'] * 8
    if family == 'simmim':
        model.neck.in_channels = width
    elif family in ('ummae', 'greenmim'):
        model.neck.update(embed_dim=width, **TINY_DECODER)
    elif family == 'localmim_compact':
        model.neck.update(embed_dims=32, num_heads=2)


def build_model(cfg: Config) -> nn.Module:
    """The model as mmengine's ``Runner`` builds and initialises it: the
    config's top-level ``data_preprocessor`` merged into ``model`` (where the
    model does not set its own), built in the config's default scope, then
    ``init_weights()`` (``Runner.train`` does it before the first step)."""
    from mmengine.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:  # as Runner.__init__
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(
            cfg.get('default_scope', 'mmpretrain')):
        model = MODELS.build(model_cfg)
    model.init_weights()
    return model


def amp_optim_wrapper(cfg: Config, fp32: OptimWrapper, opts) -> OptimWrapper:
    """The AMP twin of ``fp32`` around the same torch optimizer: on CUDA the
    config's ``AmpOptimWrapper`` (fp16 and dynamic loss scale unless the
    config says otherwise), on CPU ``mmum.CPUAmpOptimWrapper`` as in training
    (bf16 autocast where the CPU has native bf16, else fp32)."""
    clip = fp32.clip_grad_kwargs and dict(
        fp32.clip_grad_kwargs, type=fp32.grad_name[len('grad_'):])
    if not is_cuda(opts):
        from mmum.engine.optimizers.cpu_amp import CPUAmpOptimWrapper
        return CPUAmpOptimWrapper(optimizer=fp32.optimizer,
                                  clip_grad=clip or None)
    from mmengine.registry import OPTIM_WRAPPERS
    return OPTIM_WRAPPERS.build(
        dict(cfg.amp_optim_wrapper, optimizer=fp32.optimizer,
             clip_grad=clip or None))


def amp_label(opts) -> str:
    """The AMP rows' precision: fp16 on CUDA; on CPU what
    ``mmum.CPUAmpOptimWrapper`` takes (bf16, or fp32 without native bf16)."""
    if is_cuda(opts):
        return 'fp16'
    from mmum.engine.optimizers.cpu_amp import native_bf16
    return 'bf16' if native_bf16()[0] else 'fp32 (AMP: no native bf16)'


def default_batch_size(cfg: Config, opts) -> int:
    """``opts.batch_size``, else the config's per-GPU batch on CUDA and 2 on
    CPU."""
    if opts.batch_size:
        return opts.batch_size
    return cfg.train_dataloader.batch_size if is_cuda(opts) else 2


def build_row(name: str, opts, with_cp: bool = False) -> dict:
    """Row ``name``: its model (with activation checkpointing in the encoder
    if ``with_cp``) on ``opts.device``, fp32 optimizer wrapper, batch
    transforms and collate function, and with ``freeze_at`` the layers
    frozen and decoders pruned as at that point of the schedule."""
    from mmengine.registry import TRANSFORMS
    spec = ROWS[name]
    cfg = load_config(name, opts)
    if with_cp:
        cfg.model.backbone.with_cp = True
    torch.manual_seed(opts.seed)
    model = build_model(cfg).to(opts.device)
    model.train()
    with DefaultScope.overwrite_default_scope(
            cfg.get('default_scope', 'mmpretrain')):
        optim = build_optim_wrapper(model, cfg.optim_wrapper)
        # the pipeline after loading and cropping: masks are drawn per sample
        # by the config's own transforms
        transforms = [
            TRANSFORMS.build(t) for t in cfg.bench_pipeline
            if not t['type'].endswith(('LoadImageFromFile',  # also Safe*
                                       'RandomResizedCrop'))
        ]
    collate = cfg.train_dataloader.get('collate_fn',
                                       dict(type='pseudo_collate'))
    row = dict(spec, name=name, cfg=cfg, model=model, optim=optim,
               transforms=transforms,
               collate=COLLATE[collate['type'].split('.')[-1]],
               img=opts.img_size or spec['img'],
               batch_size=default_batch_size(cfg, opts), amp=False,
               compiled=False)
    if 'freeze_at' in spec:
        row['frozen'] = freeze_at(model, optim, cfg, spec['freeze_at'])
    return row


def with_mode(row: dict, opts, amp: bool = False,
              compiled: bool = False) -> dict:
    """Row ``row`` in another mode, sharing its model and optimizer: ``amp``
    (see :func:`amp_optim_wrapper`), ``compiled`` (the model's forward and
    loss under ``torch.compile``, the optimizer step outside)."""
    out = {k: v for k, v in row.items() if k not in ('times', 'faults')}
    out.update(amp=amp, compiled=compiled)
    if amp:
        out['optim'] = amp_optim_wrapper(row['cfg'], row['optim'], opts)
    if compiled:
        out['forward'] = torch.compile(row['model'].forward)
    return out


def mode_label(row: dict, opts) -> str:
    return (amp_label(opts) if row['amp'] else 'fp32') + \
        (' c' if row['compiled'] else '')


def freeze_at(model, optim, cfg, point: float) -> str:
    """Freeze what FreezeOutLR (and DecoderPruningHook) have frozen at
    ``point`` of the schedule, as ``benchmark_freezeout.py`` does per stage:
    layers 0..k-1 with freeze time <= point, decoders fed by them pruned."""
    from mmum.engine.schedulers.freezeout import FreezeOutLR, freeze_params
    sched_cfg = {
        k: v
        for k, v in cfg.param_scheduler[0].items()
        if k in ('t_0', 'spacing', 'scale_lr')
    }
    sched = FreezeOutLR(optim, **sched_cfg, end=1000, by_epoch=False)
    k = sum(1 for i in range(sched.num_layers)
            if sched.t[i] < 1 and sched.t[i] <= point)
    sched.freeze_layers(range(k))
    for d, layer in enumerate(model.decoder_layers):
        if layer < k and d not in model.pruned_decoders:
            freeze_params(optim, model.prune_decoder(d))
    n = len(model.pruned_decoders)
    return f'{k} layers frozen, {n} decoder{"s" * (n != 1)} pruned'


def make_batch(row: dict, batch_size: Optional[int] = None) -> dict:
    """A synthetic batch of 0-255 images through the row's masking
    transforms, PackInputs and collate function (a dataloader worker's
    part)."""
    samples = []
    img = row['img']
    for _ in range(batch_size or row['batch_size']):
        results = dict(
            img=np.random.randint(0, 256, (img, img, 3), dtype=np.uint8),
            img_shape=(img, img), ori_shape=(img, img))
        for t in row['transforms']:
            results = t(results)
        samples.append(results)
    return row['collate'](samples)


# ------------------------------------------------------------------ a step
def loss_of(row: dict, data: dict) -> torch.Tensor:
    """The first half of ``BaseModel.train_step`` in the row's mode (data
    preprocessor, forward, loss); the second is ``update_params(loss)``."""
    model, optim = row['model'], row['optim']
    forward = row.get('forward')
    with optim.optim_context(model):
        data = model.data_preprocessor(data, True)
        if forward is None:
            losses = model._run_forward(data, mode='loss')
        elif isinstance(data, dict):  # as BaseModel._run_forward
            losses = forward(**data, mode='loss')
        else:
            losses = forward(*data, mode='loss')
    return model.parse_losses(losses)[0]


def train_step(row: dict, data: dict) -> torch.Tensor:
    loss = loss_of(row, data)
    row['optim'].update_params(loss)
    return loss


def sync(opts) -> None:
    if is_cuda(opts):
        torch.cuda.synchronize()


class GroupingTimer:
    """Wall time spent planning GreenMIM's sparse computation during a step:
    the window grouping (``plan_groups``, with the optimal-grouping
    search) and, for Twins, the sparse convolutions' index building."""

    def __init__(self):
        import mmum.models.backbones.green_swin as green_swin
        import mmum.models.backbones.green_twins as green_twins
        self.planners = ((green_swin, 'plan_groups'),
                         (green_twins, 'plan_groups'),
                         (green_twins, 'build_strided_index'),
                         (green_twins, 'build_neighbour_index'))
        self.seconds = 0.
        self._orig = [getattr(m, n) for m, n in self.planners]

    def __enter__(self):

        def timer(fn):

            def timed(*a, **k):
                start = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    self.seconds += time.perf_counter() - start

            return timed

        for (m, n), fn in zip(self.planners, self._orig):
            setattr(m, n, timer(fn))
        return self

    def __exit__(self, *exc):
        for (m, n), fn in zip(self.planners, self._orig):
            setattr(m, n, fn)


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where not counted)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory in the process: no mmap for
    large blocks (``M_MMAP_MAX`` = 0), no heap trimming
    (``M_TRIM_THRESHOLD`` = 2 GiB - 1), so a step reuses the previous one's
    pages as PyTorch's CUDA caching allocator does.

    Raises:
        RuntimeError: without glibc's ``mallopt`` (not Linux / glibc).
    """
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
    mallopt = getattr(ctypes.CDLL(None), 'mallopt', None)
    if mallopt is None or not (mallopt(M_MMAP_MAX, 0) and
                               mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        raise RuntimeError(
            '--keep-freed-memory needs glibc\'s mallopt (Linux with glibc); '
            f'not available on {platform.platform()}. Run without it.')


def timed_step(row: dict, opts) -> None:
    """One training step; appends its time, its grouping time, the time of
    its optimizer step and its minor page faults to the row."""
    data = make_batch(row)
    optim, optim_seconds = row['optim'], []
    step = optim.step

    def timed_optim_step(*a, **k):  # OptimWrapper.update_params calls it
        sync(opts)
        start = time.perf_counter()
        try:
            return step(*a, **k)
        finally:
            sync(opts)
            optim_seconds.append(time.perf_counter() - start)

    optim.step = timed_optim_step
    sync(opts)
    faults = minor_faults()
    try:
        with GroupingTimer() as gt:
            start = time.perf_counter()
            train_step(row, data)
            sync(opts)
            seconds = time.perf_counter() - start
    finally:
        del optim.step  # back to the class's method
    for key, value in (('faults', minor_faults() - faults),
                       ('times', seconds), ('grouping_times', gt.seconds),
                       ('optim_times', sum(optim_seconds))):
        row.setdefault(key, []).append(value)


# ---------------------------------------------------------------- memory
def persistent_bytes(row: dict) -> int:
    """Bytes held between steps: parameters, buffers and optimizer state
    (distinct storages)."""
    tensors = list(row['model'].parameters()) + list(row['model'].buffers())
    for state in row['optim'].optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


# what torch's profiler (kineto / CUPTI) prints on stderr by itself
PROFILER_NOISE = re.compile(
    r'STAGE:|USDT:|ActivityProfiler|SyncActivityProfilerHandler|CUPTI|cupti|'
    r'gpuGetDeviceCount|DeviceProperties\.cpp|kineto|Profiler')


@contextmanager
def quiet_profiler():
    """Drop the lines torch's profiler writes to file descriptor 2 itself
    (kineto's ``STAGE:`` lines, CUPTI's ``gpuGetDeviceCount`` error on a
    machine without a GPU); every other line written meanwhile is passed
    on to stderr."""
    import sys
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode='w+b') as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors='replace')
                    .splitlines(True) if not PROFILER_NOISE.search(ln)]
            if kept:
                sys.stderr.write(''.join(kept))


def measure_memory(row: dict, opts) -> Tuple[int, int]:
    """``(peak, saved)`` bytes of one step above what was live at its start:
    the step's peak, and what the forward leaves alive for the backward
    (activations; grows with the batch)."""
    data = make_batch(row)
    if is_cuda(opts):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = loss_of(row, data)
        torch.cuda.synchronize()
        saved = torch.cuda.memory_allocated() - base
        row['optim'].update_params(loss)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, saved
    return cpu_memory(row, data)


def cpu_memory(row: dict, data: dict) -> Tuple[int, int]:
    """:func:`measure_memory` on CPU. While the torch profiler records
    memory, c10's CPU allocator reports every allocation and free with the
    process's running total of live bytes; the total before the step's
    first allocation is the base that the peak and the activations left
    for the backward are read against, so other rows' models and tensors
    alive in the process do not count."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function
    with quiet_profiler():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
            pass  # the profiler's own first-use allocations
        with profile(activities=[ProfilerActivity.CPU],
                     profile_memory=True) as prof:
            loss = loss_of(row, data)
            with record_function('benchmark::backward'):
                row['optim'].update_params(loss)
        events, backward_start = [], None
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            fields = node.typed[1]
            if fields.device.type == 'cpu':
                events.append((node.start_time_ns, fields.total_allocated,
                               fields.alloc_size))
        elif node.name == 'benchmark::backward':
            backward_start = node.start_time_ns
        stack.extend(node.children)
    events.sort()
    base = events[0][1] - events[0][2]  # live before the first event
    saved = base
    for t, total, _ in events:  # the last total before the backward
        if t < backward_start:
            saved = total
    return max(total for _, total, _ in events) - base, saved - base


# ----------------------------------------------------------------- FLOPs
def _as_raw(formula):
    """torch's registered (already shape-wrapped) formula, marked so that
    FlopCounterMode does not wrap it again."""

    def f(*args, **kwargs):
        return formula(*args, **kwargs)

    f._get_raw = True
    return f


def sdpa_cpu_formulas() -> dict:
    """torch's flop formulas for the CPU flash-attention kernels that
    FlopCounterMode misses."""
    from torch.utils import flop_counter
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu:
        _as_raw(flop_counter.sdpa_flop),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
        _as_raw(flop_counter.sdpa_backward_flop),
    }


@contextmanager
def first_block_tokens(model: nn.Module, out: dict):
    """Records the tokens per image entering the encoder's first block: the
    input of its first LayerNorm outside the patch embedding."""
    handles = []

    def hook(module, inputs):
        if 'tokens' not in out:
            x = inputs[0]
            out['tokens'] = x.numel() // (x.shape[0] * x.shape[-1])

    for name, m in model.backbone.named_modules():
        if isinstance(m, nn.LayerNorm) and not name.startswith('patch_embed'):
            handles.append(m.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def saved_by_decoder(model: nn.Module, out: dict):
    """Bytes autograd saves for the backward while the decoder (``neck``)
    runs its forward: distinct storages, parameters excluded."""
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inside = []
    out['saved'] = 0

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if inside and ptr not in seen:
            seen.add(ptr)
            out['saved'] += t.untyped_storage().nbytes()
        return t

    def enter(module, args):
        inside.append(module)

    def leave(module, args, output):  # (a hook's return replaces output)
        inside.pop()

    neck = getattr(model, 'neck', None)
    handles = [] if neck is None else [
        neck.register_forward_pre_hook(enter),
        neck.register_forward_hook(leave)
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
    finally:
        for h in handles:
            h.remove()


def count_flops(row: dict) -> None:
    """Training FLOPs (forward + backward) per image, total, encoder and
    decoder, the encoder's tokens per image and what the decoder saves for
    the backward, from one more step (eager: compiling changes no FLOP)."""
    from torch.utils.flop_counter import FlopCounterMode
    data = make_batch(row)
    model, n = row['model'], row['batch_size']
    counter = FlopCounterMode(display=False,
                              custom_mapping=sdpa_cpu_formulas())
    tokens, dec = {}, {}
    with first_block_tokens(model, tokens), saved_by_decoder(model, dec), \
            counter:
        train_step(dict(row, forward=None), data)
    row['dec_act_mib'] = dec['saved'] / n / 2**20
    counts = counter.get_flop_counts()
    row['train_gflops'] = counter.get_total_flops() / n / 1e9
    for key, part in (('enc', 'backbone'), ('dec', 'neck')):
        row[f'{key}_gflops'] = None if row['family'].startswith(
            'localmim') else sum(
                counts.get(f'{type(model).__name__}.{part}',
                           {}).values()) / n / 1e9
    row['tokens'] = tokens.get('tokens')


# ------------------------------------------------------------------ rows
def summarise(row: dict, opts) -> dict:
    """The row's measured values after its timed steps (the first
    ``opts.warmup`` dropped): times, optimizer share, grouping share, page
    faults, memory, FLOPs; a plain dict without the model."""
    w = opts.warmup
    t = row['times'][w:]
    out = {k: v for k, v in row.items()
           if k not in ('model', 'optim', 'transforms', 'collate', 'cfg',
                        'forward', 'optim_times', 'grouping_times', 'faults')}
    out.update(
        times=t, time_ms=statistics.median(t) * 1e3,
        time_min_ms=min(t) * 1e3, time_max_ms=max(t) * 1e3,
        optim_ms=statistics.median(row['optim_times'][w:]) * 1e3,
        faults=statistics.median(row['faults'][w:]),
        grouping_pct=(100 * sum(row['grouping_times'][w:]) / sum(t)
                      if row['family'] == 'greenmim' else None),
        mode=mode_label(row, opts))
    peak, saved = measure_memory(row, opts)
    out['mem_mib'] = (persistent_bytes(row) + peak) / 2**20
    out['act_mib'] = saved / row['batch_size'] / 2**20
    count_flops(row)
    for k in ('train_gflops', 'enc_gflops', 'dec_gflops', 'tokens',
              'dec_act_mib'):
        out[k] = row[k]
    return out


def run_pair(names: List[str], opts, modes=((False, False), )) -> List[dict]:
    """Rows ``names``, each in every ``(amp, compiled)`` mode of ``modes``,
    built once per name and timed with their steps interleaved round-robin
    (a change of machine load hits all of them alike); the results in the
    order of ``names``, then ``modes``."""
    rows = []
    for n in names:
        base = build_row(n, opts)
        rows += [with_mode(base, opts, amp, compiled)
                 for amp, compiled in modes
                 if not (compiled and base['family'] == 'greenmim')]
    for _ in range(opts.warmup + opts.steps):
        for row in rows:
            timed_step(row, opts)
    out = [summarise(row, opts) for row in rows]
    del rows
    if is_cuda(opts):
        torch.cuda.empty_cache()
    return out


def add_ratios(results: List[dict], judge: bool = True) -> None:
    """Ratios of the reference row's measured values (same mode) to this
    row's (> 1 = this row is cheaper) and, if ``judge``, the targets met /
    MISSED (without ``judge``: 'not judged', e.g. for tiny archs)."""
    by_key = {(r['name'], r.get('mode')): r for r in results}
    for r in results:
        ref = by_key.get((r['ref'], r.get('mode')))
        r['ref_label'] = ref.get('method', ref['name']) if ref else '-'
        r['time_x'] = r['mem_x'] = r['act_x'] = None
        r['flops_x'] = r['enc_flops_x'] = None
        r['verdict'] = '-' if not r['targets'] else 'no reference row'
        if ref is None:
            continue
        r['time_x'] = ref['time_ms'] / r['time_ms']
        r['mem_x'] = ref['mem_mib'] / r['mem_mib']
        r['act_x'] = ref['act_mib'] / r['act_mib']
        r['flops_x'] = ref['train_gflops'] / r['train_gflops']
        r['enc_flops_x'] = (ref['enc_gflops'] / r['enc_gflops']
                            if r['enc_gflops'] else None)
        if r['targets'] and not judge:
            r['verdict'] = 'not judged'
            continue
        verdicts = []
        for key, goal in r['targets'].items():
            if key == 'grouping':
                ok = r['grouping_pct'] <= goal
                verdicts.append(f'grp<={goal:g}% ' + ('met' if ok else
                                                      'MISSED'))
                continue
            # memory: judged on the activations (the step's memory above
            # weights and optimizer state: nearly all of it at the papers'
            # batch sizes)
            value = r[dict(mem='act').get(key, key) + '_x']
            ok = value is not None and value >= goal
            label = dict(time='time', mem='act', enc_flops='encF')[key]
            verdicts.append(f'{label}>={goal:.3g}x ' +
                            ('met' if ok else 'MISSED'))
        if verdicts:
            r['verdict'] = ', '.join(verdicts)


# -------------------------------------------------------- with_cp, equality
def loss_and_grads(row: dict, data: dict, seed: int):
    """Loss and parameter gradients of one forward/backward on ``data``
    (the model's own random draws seeded), without an optimizer step."""
    model = row['model']
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_of(row, copy.deepcopy(data))
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()
             if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def compare(a: Tuple[torch.Tensor, dict], b: Tuple[torch.Tensor, dict],
            what: str) -> dict:
    """Largest differences between two ``(loss, grads)``, on the CPU.

    Raises:
        RuntimeError: if they do not give gradients to the same
            parameters.
    """
    (l1, g1), (l2, g2) = a, b
    if g1.keys() != g2.keys():
        raise RuntimeError(f'{what} changes which parameters get gradients: '
                           f'{sorted(g1.keys() ^ g2.keys())}')
    cpu = {k: (g1[k].float().cpu(), g2[k].float().cpu()) for k in g1}
    return dict(loss=float(l1), loss_diff=float((l1.float().cpu() -
                                                 l2.float().cpu()).abs()),
                grad_diff=max(float((x - y).abs().max())
                              for x, y in cpu.values()),
                grad_max=max(float(x.abs().max()) for x, _ in cpu.values()))


def run_with_cp(name: str, opts) -> dict:
    """Row ``name`` without and with ``backbone.with_cp``: equality of the
    loss and gradients, saved activations, step time (interleaved)."""
    plain = build_row(name, opts)
    ckpt = build_row(name, opts, with_cp=True)
    ckpt['model'].load_state_dict(plain['model'].state_dict())
    data = make_batch(plain)
    out = dict(name=name, method=plain['method'], arch=plain['arch'],
               img=plain['img'], batch_size=plain['batch_size'],
               **compare(loss_and_grads(plain, data, opts.seed),
                         loss_and_grads(ckpt, data, opts.seed), 'with_cp'))
    for _ in range(opts.warmup + opts.steps):
        for row in (plain, ckpt):
            timed_step(row, opts)
    for key, row in (('', plain), ('_cp', ckpt)):
        out['time_ms' + key] = statistics.median(
            row['times'][opts.warmup:]) * 1e3
        peak, saved = measure_memory(row, opts)
        out['mem_mib' + key] = (persistent_bytes(row) + peak) / 2**20
        out['act_mib' + key] = saved / row['batch_size'] / 2**20
    out['act_saving'] = 1 - out['act_mib_cp'] / out['act_mib']
    out['time_x'] = out['time_ms_cp'] / out['time_ms']
    return out


class ReplayRandom(torch.overrides.TorchFunctionMode):
    """Records the results of torch's random functions in order
    (``record``), or replays them (``replay``: each call runs, then its
    result is overwritten with the recorded one moved to its device), so a
    model draws the same random masks and drop-outs on two devices."""
    FUNCS = {torch.rand, torch.randn, torch.randint, torch.randperm,
             torch.rand_like, torch.randn_like, torch.randint_like,
             torch.bernoulli, torch.multinomial, torch.normal,
             torch.Tensor.bernoulli_, torch.Tensor.uniform_,
             torch.Tensor.normal_, torch.Tensor.random_,
             torch.Tensor.exponential_}

    def __init__(self, recorded: Optional[List[torch.Tensor]] = None):
        super().__init__()
        self.replay = recorded is not None
        self.recorded = [] if recorded is None else list(recorded)
        self._next = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.FUNCS and torch.is_tensor(out):
            if self.replay:
                with torch.no_grad():
                    out.copy_(self.recorded[self._next].to(out.device))
                self._next += 1
            else:
                self.recorded.append(out.detach().cpu().clone())
        return out


def device_equality(name: str, opts, cpu_opts=None) -> dict:
    """One step of row ``name`` in fp32 on ``opts.device`` against the CPU
    (``cpu_opts``' settings), same weights, same batch (masks drawn once on
    the host), same random draws inside the model (:class:`ReplayRandom`);
    TF32 off. Returns the largest loss and gradient differences."""
    cpu_opts = cpu_opts or options(**dict(vars(opts), device='cpu'))
    ref = build_row(name, cpu_opts)
    row = dict(ref, model=copy.deepcopy(ref['model']).to(opts.device))
    data = make_batch(ref)
    tf32 = (torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with ReplayRandom() as rec:
            a = loss_and_grads(ref, data, opts.seed)
        with ReplayRandom(rec.recorded):
            b = loss_and_grads(row, data, opts.seed)
    finally:
        (torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = tf32
    return compare(a, b, f'{name} on {opts.device}')


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for ln in f:
                if ln.startswith('model name'):
                    name = ln.split(':', 1)[1].strip()
                    return f'{name}, {os.cpu_count()} cores'
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(opts) -> str:
    if is_cuda(opts):
        return f'{torch.cuda.get_device_name(opts.device)}, CUDA ' \
               f'{torch.version.cuda}'
    return cpu_name()


def mmcv_ops_cuda() -> str:
    """Whether mmcv's compiled ops carry CUDA kernels:
    ``mmcv.ops.get_compiling_cuda_version()`` ('not available' for a CPU
    build)."""
    try:
        from mmcv.ops import get_compiling_cuda_version
        version = get_compiling_cuda_version()
    except (ImportError, ModuleNotFoundError) as e:
        return f'no ops ({type(e).__name__})'
    return ('CPU-only ops' if version == 'not available' else
            f'CUDA kernels (CUDA {version})')


__all__: List[str] = [
    'ROWS', 'PAIRS', 'OPTIONAL', 'options', 'load_config', 'build_model',
    'build_row', 'with_mode', 'make_batch', 'loss_of', 'train_step',
    'timed_step', 'measure_memory', 'count_flops', 'run_pair', 'add_ratios',
    'run_with_cp', 'device_equality', 'ReplayRandom', 'keep_freed_memory',
    'mmcv_ops_cuda'
]

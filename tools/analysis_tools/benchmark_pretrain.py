"""Pre-training efficiency of UM-MAE, GreenMIM and ViTFreeze against their
baselines, side by side, in one table (issue 8).

Every row is built from its real config (only batch size, resolution and
step counts are overridden) and trained on synthetic images that go through
the config's own masking transforms (``mmum.UniformMasking``,
``SimMIMMaskGenerator``, ...), ``PackInputs``, collate function, the model's
``data_preprocessor`` and ``train_step`` (forward, loss, backward, optimizer
step with the config's optimizer; AMP on GPU only). The rows of a pair run
in one process with their steps interleaved round-robin, so a change of
machine load hits all of them alike.

Pairs (``--methods`` selects rows by name, see ``--list``):

- UM-MAE vs SimMIM, Swin-T and PVT-S, 256 px (UM-MAE paper, Table 3),
  with a second UM-MAE row whose encoder takes compact-grid positions
  (``positions='compact'``), to show what the original positions cost;
- GreenMIM vs SimMIM, Swin-B, 224 px, window 7 (``--swin-l`` adds Swin-L,
  window 14; ``--twins-l`` adds Twins-L (SVT-L), whose GreenMIM encoder also
  runs its convolutions sparsely); the SimMIM Swin-B/L rows are mmpretrain's
  configs, given the optimizer constructor of mmum's pre-training configs
  (``mmum.MergedGroupsOptimWrapperConstructor``: the same updates in one
  param group per set of options) so both rows of a pair step alike;
- LocalMIM ViT-B without freezing vs ViTFreeze (FreezeOut) at several
  points of its schedule (layers frozen and decoders pruned as they would
  be at that point).

Columns: step time (median and min-max over the measured steps), peak memory
of a step, training FLOPs (forward + backward, ``FlopCounterMode``) of the
whole model and of the encoder, encoder tokens per image (tokens entering the
first block), the ratios against the reference row of the same architecture
(SimMIM; LocalMIM without freezing for ViTFreeze), the issue's targets
(met / missed) and, for GreenMIM, the share of the step spent building the
window grouping.

Default (small) settings, a few minutes on two CPU cores::

    python tools/analysis_tools/benchmark_pretrain.py
    python tools/analysis_tools/benchmark_pretrain.py --device cuda \
        --batch-size 64 --steps 20 --swin-l
    python tools/analysis_tools/benchmark_pretrain.py --tiny   # smoke test

On CPU, glibc returns freed blocks above its mmap threshold to the OS, so
a row whose activations are large page-faults them in again every step
(the line under the table gives the minor page faults per step; SimMIM's
rows take 60-80 thousand, about 0.1 s, at batch 2). PyTorch's CUDA caching
allocator keeps such memory. ``--keep-freed-memory`` makes glibc keep it
too (``mallopt``: no mmap, no trimming), which times the rows as a GPU
would see them in this respect; the default times them as a CPU user with
the default allocator sees them.

``--with-cp`` measures activation checkpointing instead (issue 20): one row
per mmum pre-training method (UM-MAE Swin-T / PVT-S, GreenMIM Swin-B, and
Swin-L / Twins-L with their flags, LocalMIM ViT-B), its model built twice
from the config, with ``backbone.with_cp`` False and True and the same
weights: the loss and gradients of one step on the same batch (their largest
difference), the activations saved for the backward per image and the step
time of both, and the saving::

    python tools/analysis_tools/benchmark_pretrain.py --with-cp
"""
import argparse
import copy
import ctypes
import json
import os
import os.path as osp
import platform
import statistics
import time
import warnings
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.dataset import default_collate, pseudo_collate
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import mmum  # noqa: F401
import mmum.models.backbones.green_swin as green_swin
import mmum.models.backbones.green_twins as green_twins
from mmum.engine.schedulers.freezeout import FreezeOutLR, freeze_params

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SIMMIM_SWIN_B = ('mmpretrain::simmim/'
                 'simmim_swin-base-w6_8xb256-amp-coslr-100e_in1k-192px.py')
SIMMIM_SWIN_L = ('mmpretrain::simmim/'
                 'simmim_swin-large-w12_16xb128-amp-coslr-800e_in1k-192px.py')
VITFREEZE_POINTS = (0.6, 0.8, 0.95)
COLLATE = dict(default_collate=default_collate, pseudo_collate=pseudo_collate)  # schedule fractions of the ViTFreeze rows


def _row(method, arch, config, img, family, ref=None, targets=None,
         **extra):
    return dict(method=method, arch=arch, config=config, img=img,
                family=family, ref=ref, targets=targets or {}, **extra)


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
                            targets=dict(time=2.7, mem=1 / 0.3,
                                         grouping=2.0)),
    'simmim_swin_l': _row('SimMIM', 'Swin-L', SIMMIM_SWIN_L, 224, 'simmim',
                          window=14),
    'greenmim_swin_l': _row('GreenMIM', 'Swin-L',
                            'configs/green_mim/swin_l_800e.py', 224,
                            'greenmim', ref='simmim_swin_l',
                            targets=dict(time=2.7, mem=1 / 0.3,
                                         grouping=2.0)),
    'simmim_twins_l': _row('SimMIM', 'Twins-L',
                           'configs/simmim/twins_l_224_800e.py', 224,
                           'simmim'),
    'greenmim_twins_l': _row('GreenMIM', 'Twins-L',
                             'configs/green_mim/twins_l_800e.py', 224,
                             'greenmim', ref='simmim_twins_l',
                             targets=dict(time=2.7, mem=1 / 0.3,
                                          grouping=2.0)),
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
}
# rows timed together (interleaved), in table order
PAIRS = [['simmim_swin_t', 'ummae_swin_t', 'ummae_swin_t_compact'],
         ['simmim_pvt_s', 'ummae_pvt_s', 'ummae_pvt_s_compact'],
         ['simmim_swin_b', 'greenmim_swin_b'],
         ['simmim_swin_l', 'greenmim_swin_l'],
         ['simmim_twins_l', 'greenmim_twins_l'],
         ['localmim_vit_b'] + [f'vitfreeze_vit_b@{t}'
                               for t in VITFREEZE_POINTS]]
OPTIONAL = {  # rows run only with their flag (or named in --methods)
    'swin_l': ('simmim_swin_l', 'greenmim_swin_l'),
    'twins_l': ('simmim_twins_l', 'greenmim_twins_l'),
}

# --with-cp: the mmum pre-training encoders (Swin-L / Twins-L with
# --swin-l / --twins-l)
WITH_CP_ROWS = ('ummae_swin_t', 'ummae_pvt_s', 'greenmim_swin_b',
                'greenmim_swin_l', 'greenmim_twins_l', 'localmim_vit_b')
WITH_CP_DEFAULT = ('ummae_swin_t', 'ummae_pvt_s', 'greenmim_swin_b',
                   'localmim_vit_b')

# tiny architectures for --tiny (smoke tests): same code paths, little work
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', nargs='+', metavar='ROW',
                   help='rows to run (default: all but Swin-L and '
                   'Twins-L); a pair '
                   'runs interleaved when both of its rows are selected')
    p.add_argument('--swin-l', action='store_true',
                   help='add the GreenMIM / SimMIM Swin-L pair')
    p.add_argument('--twins-l', action='store_true',
                   help='add the GreenMIM / SimMIM Twins-L (SVT-L) pair')
    p.add_argument('--list', action='store_true', help='list the rows')
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--img-size', type=int, default=None,
                   help='override every row\'s resolution (default: 256 '
                   'for Swin-T / PVT-S, 224 for Swin-B/L and ViT-B)')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps')
    p.add_argument('--steps', type=int, default=5, help='timed steps')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=1,
                   help='torch.set_num_threads for every row (1 keeps CPU '
                   'timings steady on a shared machine)')
    p.add_argument('--tiny', action='store_true',
                   help='tiny architectures, 1 warm-up + 2 timed steps '
                   '(smoke test; ratios are not meaningful)')
    p.add_argument('--fused-optim', action='store_true',
                   help='fused=True for every row\'s Adam/AdamW (same '
                   'math, one vectorised kernel: ~5x faster optimizer step '
                   'on CPU); off = exactly the configs\' optimizers')
    p.add_argument('--keep-freed-memory', action='store_true',
                   help='CPU, glibc only: keep freed memory in the process '
                   '(mallopt: no mmap, no trimming) instead of returning it '
                   'to the OS and page-faulting it in again every step, as '
                   'the CUDA caching allocator does')
    p.add_argument('--json', help='also write the rows to this file')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--with-cp', action='store_true',
                   help='activation checkpointing of each pre-training '
                   'encoder: saved activations and step time with and '
                   'without, loss/gradient equality (rows: '
                   f'{", ".join(WITH_CP_ROWS)}; --methods selects among '
                   'them)')
    args = p.parse_args(argv)
    if args.tiny:
        args.warmup, args.steps = min(args.warmup, 1), min(args.steps, 2)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error('--steps and --batch-size must be >= 1, --warmup >= 0')
    return args


# ---------------------------------------------------------------- building
def _pipeline_set(pipeline, type_, **kwargs):
    for t in pipeline:
        if t['type'].split('.')[-1] == type_:
            t.update(kwargs)


def load_config(name: str, args) -> Config:
    """The row's config with the command line's overrides applied."""
    spec = ROWS[name]
    path = spec['config']
    if path.startswith('mmpretrain::'):
        import mmpretrain
        path = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'configs',
                        path[len('mmpretrain::'):])
    else:
        path = osp.join(ROOT, path)
    cfg = Config.fromfile(path)
    img = args.img_size or spec['img']
    model = cfg.model
    bb = model.backbone
    pipeline = copy.deepcopy(cfg.train_dataloader.dataset.pipeline)
    _pipeline_set(pipeline, 'RandomResizedCrop', scale=img)
    _pipeline_set(pipeline, 'SimMIMMaskGenerator', input_size=img)
    family = spec['family']
    if family == 'ummae':  # the encoder sees the compact half-size image
        bb.img_size = img // 2
        model.neck.num_patches = (img // model.patch_size)**2
        if 'positions' in spec:  # 'original' (the configs) or 'compact'
            bb.positions = spec['positions']
    elif family == 'greenmim':
        model.neck.num_patches = (img // model.mask_unit)**2
    if family != 'ummae' and not _is_twins(bb):  # SVT takes any size
        bb.img_size = img
    if spec['config'].startswith('mmpretrain::'):
        # as mmum's pre-training configs (the GreenMIM side of the pair):
        # the same updates, one param group per set of options
        cfg.optim_wrapper.constructor = \
            'mmum.MergedGroupsOptimWrapperConstructor'
    if 'window' in spec:  # SimMIM Swin-B/L from mmpretrain's 192-px recipe
        # a stage map smaller than the window is one window of the map's
        # size, as in GreenMIM's Swin and the official Swin/SimMIM code (the
        # window is clamped); mmpretrain's pad_small_map would pad a 7x7 map
        # to 14x14 and do 4x the work there
        bb.stage_cfgs = [
            dict(block_cfgs=dict(window_size=min(spec['window'],
                                                 img // 2**(i + 2))))
            for i in range(4)
        ]
        bb.pad_small_map = False
    if args.tiny:
        tiny(cfg, family)
    # one optimizer step per train_step; AMP only where it runs (GPU)
    ow = cfg.optim_wrapper
    ow.pop('accumulative_counts', None)
    if not args.device.startswith('cuda') and 'Amp' in ow.get('type', ''):
        ow.type = 'OptimWrapper'
        ow.pop('loss_scale', None)
    if args.fused_optim and ow.optimizer.type.split('.')[-1] in ('Adam',
                                                                   'AdamW'):
        ow.optimizer.fused = True
    cfg.bench_pipeline = pipeline
    return cfg


def _is_twins(backbone_cfg) -> bool:
    return backbone_cfg.type.split('.')[-1] in ('GreenTwins', 'SimMIMSVT')


def tiny(cfg: Config, family: str) -> None:
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


def build_row(name: str, args, with_cp: bool = False) -> dict:
    """Model, optim wrapper and sample generator of row ``name`` (its
    encoder with activation checkpointing if ``with_cp``)."""
    from mmpretrain.registry import MODELS, TRANSFORMS
    spec = ROWS[name]
    cfg = load_config(name, args)
    if with_cp:
        cfg.model.backbone.with_cp = True
    torch.manual_seed(args.seed)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model).to(args.device)
        model.train()
        optim = build_optim_wrapper(model, cfg.optim_wrapper)
        # the pipeline after loading and cropping: masks are drawn per sample
        # by the config's own transforms
        transforms = [
            TRANSFORMS.build(t) for t in cfg.bench_pipeline
            if t['type'].split('.')[-1] not in ('LoadImageFromFile',
                                                'RandomResizedCrop')
        ]
        collate = cfg.train_dataloader.get('collate_fn',
                                           dict(type='pseudo_collate'))
        collate = COLLATE[collate['type'].split('.')[-1]]
    row = dict(spec, name=name, model=model, optim=optim,
               transforms=transforms, collate=collate,
               img=args.img_size or spec['img'])
    if 'freeze_at' in spec:
        row['frozen'] = freeze_at(model, optim, cfg, spec['freeze_at'])
    return row


def freeze_at(model, optim, cfg, point: float) -> str:
    """Freeze what FreezeOutLR (and DecoderPruningHook) have frozen at
    ``point`` of the schedule, as ``benchmark_freezeout.py`` does per stage:
    layers 0..k-1 with freeze time <= point, decoders fed by them pruned."""
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


def make_batch(row: dict, args, batch_size: Optional[int] = None) -> dict:
    """A synthetic batch through the row's masking transforms, PackInputs
    and collate function (the part a dataloader worker would do)."""
    samples = []
    img = row['img']
    for _ in range(batch_size or args.batch_size):
        results = dict(
            img=np.random.randint(0, 256, (img, img, 3), dtype=np.uint8),
            img_shape=(img, img), ori_shape=(img, img))
        for t in row['transforms']:
            results = t(results)
        samples.append(results)
    return row['collate'](samples)


# ---------------------------------------------------------------- measuring
class GroupingTimer:
    """Wall time spent planning GreenMIM's sparse computation during a step:
    the window grouping (``plan_groups``, which runs the
    optimal-grouping search) and, for Twins, the index building of the
    sparse convolutions."""
    PLANNERS = ((green_swin, 'plan_groups'),
                (green_twins, 'plan_groups'),
                (green_twins, 'build_strided_index'),
                (green_twins, 'build_neighbour_index'))

    def __init__(self):
        self.seconds = 0.
        self._orig = [getattr(m, n) for m, n in self.PLANNERS]

    def __enter__(self):

        def timer(fn):

            def timed(*a, **k):
                start = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    self.seconds += time.perf_counter() - start

            return timed

        for (m, n), fn in zip(self.PLANNERS, self._orig):
            setattr(m, n, timer(fn))
        return self

    def __exit__(self, *exc):
        for (m, n), fn in zip(self.PLANNERS, self._orig):
            setattr(m, n, fn)


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where the OS does not
    count them)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory in the process: no mmap for
    large blocks (``M_MMAP_MAX`` = 0) and no trimming of the heap
    (``M_TRIM_THRESHOLD`` = 2 GiB - 1), so a step reuses the pages of the
    previous one as PyTorch's CUDA caching allocator does.

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


def _sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def train_step(row, data):
    return row['model'].train_step(data, row['optim'])


def timed_step(row: dict, args) -> None:
    """One training step; appends its time, its grouping time and the time
    of its optimizer step."""
    data = make_batch(row, args)
    device = args.device
    optim, optim_seconds = row['optim'], []
    step = optim.step

    def timed_optim_step(*a, **k):  # OptimWrapper.update_params calls it
        _sync(device)
        start = time.perf_counter()
        try:
            return step(*a, **k)
        finally:
            _sync(device)
            optim_seconds.append(time.perf_counter() - start)

    optim.step = timed_optim_step
    _sync(device)
    faults = minor_faults()
    try:
        with GroupingTimer() as gt:
            start = time.perf_counter()
            train_step(row, data)
            _sync(device)
            seconds = time.perf_counter() - start
    finally:
        del optim.step  # back to the class's method
    row.setdefault('faults', []).append(minor_faults() - faults)
    row.setdefault('times', []).append(seconds)
    row.setdefault('grouping_times', []).append(gt.seconds)
    row.setdefault('optim_times', []).append(sum(optim_seconds))


def persistent_bytes(row: dict) -> int:
    """Bytes held between steps by this row: parameters, buffers and
    optimizer state (distinct storages)."""
    tensors = list(row['model'].parameters()) + list(row['model'].buffers())
    for state in row['optim'].optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def forward_half(row: dict, data: dict) -> torch.Tensor:
    """The first half of ``BaseModel.train_step`` (preprocessor, forward,
    loss), whose second half is ``optim.update_params(loss)``."""
    model, optim = row['model'], row['optim']
    with optim.optim_context(model):
        data = model.data_preprocessor(data, True)
        losses = model._run_forward(data, mode='loss')
    return model.parse_losses(losses)[0]


def measure_memory(row: dict, args) -> Tuple[int, int]:
    """``(peak, saved)`` bytes of one step above what was live before it:
    the step's peak, and what the forward pass leaves alive for the
    backward (activations; grows with the batch)."""
    data = make_batch(row, args)
    if args.device.startswith('cuda'):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = forward_half(row, data)
        torch.cuda.synchronize()
        saved = torch.cuda.memory_allocated() - base
        row['optim'].update_params(loss)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, saved
    return cpu_memory(row, data)


def cpu_memory(row: dict, data: dict) -> Tuple[int, int]:
    """:func:`measure_memory` on CPU. While the torch profiler records
    memory, c10's CPU allocator reports every allocation and free with its
    running total of live bytes since recording began: the largest total is
    the peak, the last total before the backward starts is what the forward
    left alive."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
        pass  # the profiler's own first-use allocations
    with profile(activities=[ProfilerActivity.CPU],
                 profile_memory=True) as prof:
        loss = forward_half(row, data)
        with record_function('benchmark_pretrain::backward'):
            row['optim'].update_params(loss)
    allocs, backward_start = [], None
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            fields = node.typed[1]
            if fields.device.type == 'cpu':
                allocs.append((node.start_time_ns, fields.total_allocated))
        elif node.name == 'benchmark_pretrain::backward':
            backward_start = node.start_time_ns
        stack.extend(node.children)
    allocs.sort()
    saved = 0
    for t, total in allocs:
        if t < backward_start:
            saved = total
    return max(total for _, total in allocs), saved


def _as_raw(formula):
    """torch's registered (already shape-wrapped) formula, marked so that
    FlopCounterMode does not wrap it again."""

    def f(*args, **kwargs):
        return formula(*args, **kwargs)

    f._get_raw = True
    return f


SDPA_CPU = {  # torch's flop formulas, for the CPU flash kernels it misses
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
    _as_raw(flop_counter.sdpa_flop),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
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

    def leave(module, args, output):
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


def count_flops(row: dict, args) -> None:
    """Training FLOPs (forward + backward) per image, total, encoder and
    decoder, the encoder's tokens per image and what the decoder saves for
    the backward, from one more step."""
    data = make_batch(row, args)
    model = row['model']
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_CPU)
    tokens, dec = {}, {}
    with first_block_tokens(model, tokens), saved_by_decoder(model, dec), \
            counter:
        train_step(row, data)
    row['dec_act_mib'] = dec['saved'] / args.batch_size / 2**20
    counts = counter.get_flop_counts()
    row['train_gflops'] = counter.get_total_flops() / args.batch_size / 1e9
    for key, part in (('enc', 'backbone'), ('dec', 'neck')):
        row[f'{key}_gflops'] = None if row['family'] == 'localmim' else sum(
            counts.get(f'{type(model).__name__}.{part}',
                       {}).values()) / args.batch_size / 1e9
    row['tokens'] = tokens.get('tokens')


def run_pair(names: List[str], args) -> List[dict]:
    rows = [build_row(n, args) for n in names]
    for i in range(args.warmup + args.steps):  # round-robin, step by step
        for row in rows:
            timed_step(row, args)
    for row in rows:
        row['times'] = row['times'][args.warmup:]
        row['faults'] = statistics.median(row['faults'][args.warmup:])
        row['grouping_times'] = row['grouping_times'][args.warmup:]
        row['optim_ms'] = statistics.median(
            row['optim_times'][args.warmup:]) * 1e3
        t = row['times']
        row['time_ms'] = statistics.median(t) * 1e3
        row['time_min_ms'], row['time_max_ms'] = min(t) * 1e3, max(t) * 1e3
        row['grouping_pct'] = (100 * sum(row['grouping_times']) / sum(t)
                               if row['family'] == 'greenmim' else None)
        peak, saved = measure_memory(row, args)
        row['mem_mib'] = (persistent_bytes(row) + peak) / 2**20
        row['act_mib'] = saved / args.batch_size / 2**20
        count_flops(row, args)
    out = []
    for row in rows:
        keep = {
            k: v
            for k, v in row.items()
            if k not in ('model', 'optim', 'transforms', 'collate',
                         'config')
        }
        out.append(keep)
    del rows
    return out


def loss_and_grads(row: dict, data: dict, seed: int):
    """Loss and parameter gradients of one forward/backward on ``data``
    (the model's own random draws seeded), without an optimizer step."""
    model = row['model']
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = forward_half(row, copy.deepcopy(data))
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()
             if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def run_with_cp(name: str, args) -> dict:
    """Row ``name`` without and with ``backbone.with_cp``: equality of the
    loss and gradients, saved activations, step time (interleaved)."""
    plain = build_row(name, args)
    ckpt = build_row(name, args, with_cp=True)
    ckpt['model'].load_state_dict(plain['model'].state_dict())
    data = make_batch(plain, args)
    (l1, g1), (l2, g2) = (loss_and_grads(r, data, args.seed)
                          for r in (plain, ckpt))
    if g1.keys() != g2.keys():
        raise RuntimeError(f'{name}: with_cp changes which parameters get '
                           f'gradients: {sorted(g1.keys() ^ g2.keys())}')
    out = dict(name=name, method=plain['method'], arch=plain['arch'],
               img=plain['img'], loss=float(l1),
               loss_diff=float((l1 - l2).abs()),
               grad_diff=max(float((g1[k] - g2[k]).abs().max()) for k in g1),
               grad_max=max(float(g.abs().max()) for g in g1.values()))
    for i in range(args.warmup + args.steps):
        for row in (plain, ckpt):
            timed_step(row, args)
    for key, row in (('', plain), ('_cp', ckpt)):
        out['time_ms' + key] = statistics.median(
            row['times'][args.warmup:]) * 1e3
        peak, saved = measure_memory(row, args)
        out['mem_mib' + key] = (persistent_bytes(row) + peak) / 2**20
        out['act_mib' + key] = saved / args.batch_size / 2**20
    out['act_saving'] = 1 - out['act_mib_cp'] / out['act_mib']
    out['time_x'] = out['time_ms_cp'] / out['time_ms']
    return out


CP_COLUMNS = [  # header, key, format
    ('method', 'method', '{}'), ('arch', 'arch', '{}'), ('img', 'img', '{}'),
    ('act MiB/img', 'act_mib', '{:.1f}'), ('act cp', 'act_mib_cp', '{:.1f}'),
    ('act saved', 'act_saving', '{:.0%}'),
    ('peak MiB', 'mem_mib', '{:.0f}'), ('peak cp', 'mem_mib_cp', '{:.0f}'),
    ('step ms', 'time_ms', '{:.1f}'), ('step cp', 'time_ms_cp', '{:.1f}'),
    ('time x', 'time_x', '{:.2f}'), ('loss', 'loss', '{:.4g}'),
    ('loss diff', 'loss_diff', '{:.1e}'),
    ('grad diff', 'grad_diff', '{:.1e}'),
    ('grad max', 'grad_max', '{:.2g}'),
]


def markdown_table(header: List[str], body: List[List[str]]) -> List[str]:
    """The lines of a Markdown table, columns padded to their widest cell."""
    widths = [max(len(x[i]) for x in [header] + body)
              for i in range(len(header))]

    def line(xs):
        return '| ' + ' | '.join(x.ljust(w) for x, w in zip(xs, widths)) + ' |'

    return [line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
            ] + [line(b) for b in body]


def format_cp_table(results: List[dict], args) -> str:
    header = [c[0] for c in CP_COLUMNS]
    body = [[fmt.format(r[key]) for _, key, fmt in CP_COLUMNS]
            for r in results]
    lines = markdown_table(header, body)
    dev = (torch.cuda.get_device_name(args.device)
           if args.device.startswith('cuda') else cpu_name())
    notes = [
        f'device: {dev}; torch {torch.__version__}, '
        f'{torch.get_num_threads()} thread(s); batch {args.batch_size}, '
        f'{args.warmup} warm-up + {args.steps} timed steps per model, '
        'interleaved' + (' (TINY archs: smoke test only)' if args.tiny
                         else ''),
        'each row: the config\'s model with backbone.with_cp=False and '
        'True (the "cp" columns), same weights; act MiB/img: activations '
        'the forward leaves alive for the backward, per image (see the main'
        ' table), act saved = 1 - cp/without; time x = step time cp / '
        'without (the '
        'recomputation); loss diff, grad diff: one forward+backward of both '
        'on the same batch with the same random draws (grad max: the '
        'largest gradient, for scale); diffs are the largest absolute ones',
    ]
    return '\n'.join(lines + [''] + notes)


def add_ratios(results: List[dict]) -> None:
    """Ratios of the reference row's measured values to this row's (> 1 =
    this row is cheaper) and the targets met / missed."""
    by_name = {r['name']: r for r in results}
    for r in results:
        ref = by_name.get(r['ref'])
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
        verdicts = []
        for key, goal in r['targets'].items():
            if key == 'grouping':
                value, ok = r['grouping_pct'], r['grouping_pct'] <= goal
                verdicts.append(f'grp<={goal:g}% ' + ('met' if ok else
                                                      'MISSED'))
                continue
            # memory: judged on the step's memory above weights and
            # optimizer state, which dominates at the papers' batch sizes
            value = r[dict(mem='act').get(key, key) + '_x']
            ok = value is not None and value >= goal
            label = dict(time='time', mem='act', enc_flops='encF')[key]
            verdicts.append(f'{label}>={goal:.3g}x ' +
                            ('met' if ok else 'MISSED'))
        if verdicts:
            r['verdict'] = ', '.join(verdicts)


# ---------------------------------------------------------------- printing
COLUMNS = [  # header, key, format
    ('method', 'method', '{}'), ('arch', 'arch', '{}'), ('img', 'img', '{}'),
    ('enc tok/img', 'tokens', '{}'), ('step ms', 'time_ms', '{:.1f}'),
    ('min-max ms', None, None), ('optim ms', 'optim_ms', '{:.1f}'),
    ('peak MiB', 'mem_mib', '{:.0f}'),
    ('act MiB/img', 'act_mib', '{:.1f}'),
    ('train GFLOP/img', 'train_gflops', '{:.3g}'),
    ('enc GFLOP/img', 'enc_gflops', '{:.3g}'),
    ('dec GFLOP/img', 'dec_gflops', '{:.3g}'), ('vs', 'ref_label', '{}'),
    ('time x', 'time_x', '{:.2f}'), ('mem x', 'mem_x', '{:.2f}'),
    ('act x', 'act_x', '{:.2f}'),
    ('FLOPs x', 'flops_x', '{:.2f}'), ('enc FLOPs x', 'enc_flops_x',
                                       '{:.2f}'),
    ('grouping %', 'grouping_pct', '{:.2f}'), ('targets', 'verdict', '{}')
]


def cell(r, key, fmt):
    if key is None:
        return f"{r['time_min_ms']:.1f}-{r['time_max_ms']:.1f}"
    v = r.get(key)
    return '-' if v is None else fmt.format(v)


def format_table(results: List[dict], args) -> str:
    by_name = {r['name']: r for r in results}
    for r in results:
        ref = by_name.get(r['ref'])
        r['ref_label'] = ref['method'] if ref else '-'
        if r.get('frozen'):
            r['method'] = f"{r['method']} ({r['frozen']})"
    header = [c[0] for c in COLUMNS]
    body = [[cell(r, key, fmt) for _, key, fmt in COLUMNS] for r in results]
    lines = markdown_table(header, body)
    if args.device.startswith('cuda'):
        dev = torch.cuda.get_device_name(args.device)
        mem = ('peak MiB: torch.cuda.max_memory_allocated during a timed '
               'step above what was allocated before it, plus the row\'s '
               'parameters, buffers and optimizer state')
    else:
        dev = cpu_name()
        mem = ('peak MiB: largest live-bytes total the CPU allocator '
               'reports to the torch profiler (profile_memory) during one '
               'extra step, above what was live before it, plus the row\'s '
               'parameters, buffers and optimizer state; i.e. tensor '
               'memory, not process RSS')
    notes = [
        f'device: {dev}; torch {torch.__version__}, '
        f'{torch.get_num_threads()} thread(s); batch {args.batch_size}, '
        f'{args.warmup} warm-up + {args.steps} timed steps per row, pairs '
        'interleaved step by step' + (' (TINY archs: smoke test only)'
                                      if args.tiny else '') +
        ('; fused AdamW' if args.fused_optim else
         '; the configs\' optimizers as they are'),
        'step ms: median (and min-max) of train_step: data preprocessor, '
        'forward, loss, backward, optimizer step' +
        (' (AMP)' if args.device.startswith('cuda') else ' (fp32)') +
        '; optim ms: the optimizer step\'s part of it (median)',
        mem,
        'act MiB/img: what the forward pass leaves alive for the backward '
        '(activations saved by autograd), per image; memory targets are '
        'judged on its ratio (act x): at the papers\' batch sizes (128-256'
        ' per GPU) it is nearly all of the peak, while at a small benchmark'
        ' batch the weights and optimizer state dominate "peak MiB"',
        'GFLOP/img: FlopCounterMode over forward + backward of one step '
        '(matmuls, convs, attention), per image; enc = the backbone, dec '
        '= the neck (decoder; neither shown for LocalMIM, whose decoders '
        'read several blocks: torch\'s module tracker then books their '
        'backward to the encoder)',
        'enc tok/img: tokens entering the encoder\'s first block',
        'ViTFreeze@t: configs/vitfreeze/vit_b_100e.py with the layers '
        'FreezeOutLR has frozen at fraction t of the schedule and the '
        'decoders DecoderPruningHook has pruned by then (whole-schedule '
        'saving: tools/analysis_tools/benchmark_freezeout.py)',
        'x columns: the reference row\'s value / this row\'s (> 1: cheaper)'
        ' from the measured values above; grouping %: share of the step '
        'spent in GreenMIM\'s plan_groups (optimal grouping search + '
        'index building; for Twins also the sparse convolutions\' index '
        'building)',
    ]
    return '\n'.join(lines + [''] + notes + page_faults(results, args) +
                     positions_cost(results) + where_time_goes(results))


def page_faults(results: List[dict], args) -> List[str]:
    """Minor page faults per timed step of each row (median), CPU only."""
    if args.device.startswith('cuda'):
        return []
    rows = ', '.join(f"{r['method']} {r['arch']} {r['faults']:.0f}"
                     for r in results if 'faults' in r)
    how = ('freed memory kept in the process (--keep-freed-memory)'
           if args.keep_freed_memory else
           'glibc\'s default malloc; --keep-freed-memory keeps freed memory'
           ' as the CUDA caching allocator does')
    return ['', f'minor page faults per step (median; {how}): {rows}']


POSITIONS_COST = dict(time=5., act=10.)  # max % over 'compact' (issue 13)


def positions_cost(results: List[dict]) -> List[str]:
    """What UM-MAE's original positions (the configs' default) cost against
    ``positions='compact'``: extra step time and saved activations, in %,
    and the targets of issue 13, for each pair of such rows."""
    by_name = {r['name']: r for r in results}
    out = []
    for r in results:
        orig = by_name.get(r['name'][:-len('_compact')])
        if r.get('positions') != 'compact' or orig is None:
            continue
        cost = {k: 100 * (orig[f'{k}_{u}'] / r[f'{k}_{u}'] - 1)
                for k, u in (('time', 'ms'), ('act', 'mib'))}
        verdict = ', '.join(
            f"{label} {cost[k]:+.1f}% (<= {POSITIONS_COST[k]:g}% "
            f"{'met' if cost[k] <= POSITIONS_COST[k] else 'MISSED'})"
            for k, label in (('time', 'step time'), ('act', 'saved act.')))
        out.append(f"{orig['method']} {orig['arch']}: original positions vs "
                   f"compact: {verdict}")
    return [''] + out if out else []


def where_time_goes(results: List[dict]) -> List[str]:
    """For each row that misses a target: its FLOPs split and the bound the
    split puts on its ratios, from the measured values above."""
    out = []
    for r in results:
        if 'MISSED' not in r.get('verdict', '') or not r.get('dec_gflops'):
            continue
        dec = r['dec_gflops'] / r['train_gflops']
        out.append(
            f"{r['method']} {r['arch']} misses a target. Where its step "
            f"goes: the decoder is {dec:.0%} of its training FLOPs "
            f"({r['dec_gflops']:.3g} of {r['train_gflops']:.3g} GFLOP/img), "
            f"the encoder {r['enc_gflops']:.3g} ({r['enc_flops_x']:.2f}x "
            f"fewer than {r['ref_label']}'s); so the whole step does "
            f"{r['flops_x']:.2f}x fewer FLOPs than {r['ref_label']} while "
            f"time is {r['time_x']:.2f}x; the optimizer step is "
            f"{r['optim_ms'] / r['time_ms']:.0%} of its step time. The "
            f"decoder also holds {r['dec_act_mib']:.3g} of its "
            f"{r['act_mib']:.3g} MiB/img of saved activations "
            f"({r['dec_act_mib'] / r['act_mib']:.0%}).")
    return [''] + out if out else []


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


def selected(args) -> List[List[str]]:
    flagged = [n for flag, rows in OPTIONAL.items() if getattr(args, flag)
               for n in rows]
    optional = [n for rows in OPTIONAL.values() for n in rows]
    names = args.methods or [
        n for n in ROWS if n in flagged or n not in optional
    ]
    if args.methods:
        names = list(names) + [n for n in flagged if n not in names]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise ValueError(f'unknown rows {unknown}; choose from {list(ROWS)}')
    return [[n for n in pair if n in names] for pair in PAIRS
            if any(n in names for n in pair)]


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    if args.list:
        for name, spec in ROWS.items():
            print(f"{name:22} {spec['method']:16} {spec['arch']:7} "
                  f"{spec['config']}")
        return []
    # quiet the optimizer constructors' per-parameter INFO lines
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    MMLogger.get_instance('benchmark_pretrain', log_level='WARNING')
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    if args.keep_freed_memory:
        keep_freed_memory()
    if args.with_cp:
        names = [n for n in WITH_CP_ROWS
                 if n in (args.methods or WITH_CP_DEFAULT) or
                 (args.swin_l and 'swin_l' in n) or
                 (args.twins_l and 'twins_l' in n)]
        unknown = set(args.methods or ()) - set(WITH_CP_ROWS)
        if unknown or not names:
            raise ValueError(f'--with-cp rows are {WITH_CP_ROWS}; got '
                             f'{sorted(unknown) or args.methods}')
        results = []
        for name in names:
            print(f'running {name} without / with with_cp ...', flush=True)
            results.append(run_with_cp(name, args))
        print(format_cp_table(results, args), flush=True)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(results, f, indent=1)
        return results
    results = []
    for pair in selected(args):
        print(f'running {" | ".join(pair)} ...', flush=True)
        results += run_pair(pair, args)
    add_ratios(results)
    print(format_table(results, args), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == '__main__':
    main()

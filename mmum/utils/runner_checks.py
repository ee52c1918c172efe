"""What mmum adds where mmengine's ``Runner`` wraps the model.

:func:`install` (run by ``import mmum``) wraps ``Runner.wrap_model`` once so
that, for every Runner (``tools/train.py``, ``tools/test.py`` or a user's
script):

1. **Frozen stages before DDP.** mmpretrain's and mmdet's Swin (and other
   backbones) freeze their first stages in ``train()``, which the loops call
   after the Runner has wrapped the model in DDP. DDP records at
   construction which parameters need gradients; ones frozen afterwards
   never get one, and without ``find_unused_parameters`` the second
   iteration stops with "Expected to have finished reduction in the prior
   iteration". In a distributed run the unwrapped model's ``train()`` is
   called first (the train loop's own first step). mmum's backbones also
   freeze at build.
2. **SyncBN on one process is said.** mmengine turns every ``SyncBN`` into
   ``BN`` when the run is not distributed; a warning names the layers and
   the batch their statistics now come from.
3. **BatchNorm with one value per channel.** Every BatchNorm layer checks its
   training input first: a map pooled to 1x1 (UperNet's pyramid pooling,
   scale 1) from one image per process has one value per channel, which
   torch refuses with "Expected more than 1 value per channel". The check
   names the layer, the batch size and the fixes instead.
4. **``frozen_stages`` across toolboxes.** mmdet's and mmseg's Swin freeze
   the stem and stages ``0..k-1`` for ``frozen_stages=k``; mmpretrain's
   backbones, and so mmum's, freeze the stem and stages ``0..k``. When a
   config whose ``default_scope`` is mmdet or mmseg passes
   ``frozen_stages >= 0`` to an mmum or mmpretrain backbone, a warning says
   which stages that freezes and which value gives mmdet's meaning.
5. **Three channels.** An image loader whose ``color_type`` does not give 3
   channels for a 3-channel model stops with the fix
   (:func:`mmum.datasets.checks.check_image_channels`), before torch's
   ``IndexError`` in the data preprocessor.
6. **Class counts agree.** A classifier whose ``head.num_classes``, data
   preprocessor ``num_classes`` (Mixup / CutMix targets) and evaluators'
   ``topk`` disagree stops before training with the one override that
   fixes them all (:func:`check_class_counts`), instead of a shape error in
   the first step or a top-5 error after the first training epoch.
7. **Decoder width follows the encoder.** A pre-training model whose neck
   declares an input width (``embed_dim`` of the UM-MAE / GreenMIM / MAE
   decoders, ``in_channels`` of SimMIM's) other than the width of the
   encoder's last stage stops with the fix (:func:`check_decoder_width`),
   instead of "mat1 and mat2 shapes cannot be multiplied" in the first step.
   (LocalMIM's decoders take their widths from the encoder.)

It also logs a short config summary (:mod:`mmum.utils.quiet_logs`).
"""
import functools

import torch
from torch.nn.modules.batchnorm import _BatchNorm

_FLAG = '_mmum_runner_checks'


def _batch_size(cfg) -> str:
    loader = (cfg or {}).get('train_dataloader') or {}
    return str(loader.get('batch_size', '?'))


def one_value_per_channel_check(name: str, batch_size: str):
    """A forward pre-hook for a BatchNorm layer ``name``: in training, an
    input with one value per channel (N x H x W == 1) raises ValueError
    naming the layer, the images per process and the fixes."""

    def hook(module, args):
        x = args[0]
        if not module.training or x.dim() < 2:
            return
        if x.numel() // max(x.shape[1], 1) > 1:
            return
        raise ValueError(
            f'{name} ({type(module).__name__}) cannot train on an input of '
            f'shape {tuple(x.shape)}: one value per channel, from '
            f'{x.shape[0]} image(s) on this process (train_dataloader.'
            f'batch_size={batch_size}). Batch statistics need more than one '
            f'value; a map pooled to 1x1 (UperNet\'s pyramid pooling, scale '
            f'1) has one per image. Use at least 2 images per process '
            f'(--cfg-options train_dataloader.batch_size=2), or SyncBN over '
            f'several GPUs, or GroupNorm in that head (e.g. '
            f"norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)).")

    return hook


def frozen_stages_note(cfg, model):
    """The warning of item 4 for ``model`` built from ``cfg``, or None."""
    scope = (cfg or {}).get('default_scope')
    backbone = getattr(model, 'backbone', None)
    k = getattr(backbone, 'frozen_stages', None)
    if scope not in ('mmdet', 'mmseg') or not isinstance(k, int) or k < 0:
        return None
    toolbox = type(backbone).__module__.split('.')[0]
    if toolbox not in ('mmum', 'mmpretrain'):
        return None
    same = (f'frozen_stages={k - 1}' if k > 0 else
            'no equivalent here (mmdet\'s 0 freezes the stem only)')
    return (f'model.backbone.frozen_stages={k} ({scope} config): '
            f'{toolbox}.{type(backbone).__name__} freezes the stem and '
            f'stages 0..{k} ({k + 1} stages), mmpretrain\'s meaning; '
            f'{scope}\'s own Swin / ResNet freeze stages 0..{k - 1} for the '
            f'same value. For {scope}\'s meaning use {same}.')


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def check_class_counts(cfg) -> None:
    """``model.head.num_classes`` against the data preprocessor's
    ``num_classes`` and every ``Accuracy`` evaluator's ``topk``.

    Raises:
        ValueError: naming the values that disagree and the
            ``--cfg-options`` that sets all of them for the head's count.
    """
    model = (cfg or {}).get('model') or {}
    head = model.get('head') or {}
    n = head.get('num_classes') if isinstance(head, dict) else None
    if not isinstance(n, int):
        return
    pre = cfg.get('data_preprocessor') or model.get('data_preprocessor') or {}
    key = 'data_preprocessor' if cfg.get('data_preprocessor') else \
        'model.data_preprocessor'
    problems = []
    m = pre.get('num_classes')
    if m is not None and m != n:
        problems.append(f'{key}.num_classes={m}')
    evals = {}
    for name in ('val_evaluator', 'test_evaluator'):
        for i, ev in enumerate(_as_list(cfg.get(name) or [])):
            if isinstance(ev, dict) and str(ev.get('type', '')).split(
                    '.')[-1] == 'Accuracy':
                topk = _as_list(ev.get('topk', 1))
                if max(topk) > n:
                    where = name if isinstance(cfg.get(name), dict) else \
                        f'{name}[{i}]'
                    evals[where] = tuple(k for k in topk if k <= n) or (1, )
                    problems.append(f'{where}.topk={tuple(topk)}')
    if not problems:
        return
    fix = [f'model.head.num_classes={n}']
    if m is not None:
        fix.append(f'{key}.num_classes={n}')
    for where, topk in evals.items():
        value = str(topk[0]) if len(topk) == 1 else \
            f'"{topk}"'.replace(' ', '')
        fix.append(f'{where}.topk={value}')
    raise ValueError(
        f'model.head.num_classes={n} disagrees with {", ".join(problems)} '
        f'(top-k needs k <= the number of classes). For {n} classes set '
        f'them together: --cfg-options {" ".join(fix)}')


def encoder_width(backbone):
    """Channels of the last stage's output of an mmum / mmpretrain encoder
    (Swin: the last stage's ``out_channels``; PVT, Twins: ``embed_dims[-1]``;
    ViT: ``embed_dims``), or None when unknown."""
    stages = getattr(backbone, 'stages', None)
    if stages is not None and len(stages) and hasattr(stages[-1],
                                                       'out_channels'):
        return stages[-1].out_channels
    dims = getattr(backbone, 'embed_dims', None)
    if isinstance(dims, (list, tuple)):
        return dims[-1]
    return dims if isinstance(dims, int) else None


def check_decoder_width(cfg, model) -> None:
    """The pre-training neck's declared input width against the encoder.

    Raises:
        ValueError: naming ``model.neck.<key>``, the encoder's width and
            the override that fixes it.
    """
    neck_cfg = ((cfg or {}).get('model') or {}).get('neck') or {}
    if not isinstance(neck_cfg, dict):
        return
    key = next((k for k in ('embed_dim', 'in_channels')
                if isinstance(neck_cfg.get(k), int)), None)
    width = encoder_width(getattr(model, 'backbone', None))
    if key is None or width is None or neck_cfg[key] == width:
        return
    raise ValueError(
        f'model.neck.{key}={neck_cfg[key]} ({neck_cfg.get("type")}), but '
        f'the encoder ({type(model.backbone).__name__}) outputs {width} '
        f'channels from its last stage: the decoder reads that output. '
        f'Set them together, e.g. --cfg-options model.neck.{key}={width}')


def _sync_bn_names(model):
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.SyncBatchNorm)]


def install() -> None:
    """Wrap ``mmengine.runner.Runner.wrap_model`` (once)."""
    from mmengine.logging import print_log
    from mmengine.model import is_model_wrapper
    from mmengine.runner import Runner

    from mmum.datasets.checks import check_image_channels
    from mmum.utils.quiet_logs import config_summary
    wrap = Runner.wrap_model
    if getattr(wrap, _FLAG, False):
        return

    @functools.wraps(wrap)
    def wrap_model(self, model_wrapper_cfg, model):
        batch_size = _batch_size(self.cfg)
        self.logger.info(config_summary(self.cfg))
        check_image_channels(self.cfg)  # 3-channel images for the model
        check_class_counts(self.cfg)
        if not is_model_wrapper(model):
            check_decoder_width(self.cfg, model)
            note = frozen_stages_note(self.cfg, model)
            if note:
                print_log(note, logger='current', level=30)
            if self.distributed:
                model.train()  # applies frozen_stages (requires_grad=False)
            else:
                sync = _sync_bn_names(model)
                if sync:
                    print_log(
                        f'one process: the {len(sync)} SyncBN layers of the '
                        f'model ({", ".join(sync[:3])}'
                        f'{", ..." if len(sync) > 3 else ""}) run as '
                        f'BatchNorm, their statistics from the '
                        f'{batch_size} images of each batch',
                        logger='current', level=30)
        wrapped = wrap(self, model_wrapper_cfg, model)
        inner = wrapped.module if is_model_wrapper(wrapped) else wrapped
        for name, m in inner.named_modules():
            if isinstance(m, _BatchNorm) and not isinstance(
                    m, torch.nn.SyncBatchNorm):
                m.register_forward_pre_hook(
                    one_value_per_channel_check(name, batch_size))
        return wrapped

    setattr(wrap_model, _FLAG, True)
    Runner.wrap_model = wrap_model

"""Mixed precision on CPU: ``AmpOptimWrapper``'s stand-in without CUDA.

mmengine's ``AmpOptimWrapper`` asserts that a CUDA (or NPU / MLU / MUSA)
device exists. On a machine without one, :func:`mmum.utils.dist.
cpu_fallback_amp` (called by ``tools/train.py`` and ``tools/demo.py``)
replaces it with :class:`CPUAmpOptimWrapper`, which trains under
``torch.autocast('cpu', dtype=torch.bfloat16)`` when the CPU computes bf16
natively (AVX512-BF16 or AMX-BF16) and in plain fp32 otherwise. Either way
it logs one line saying which and why.
"""
import importlib
from contextlib import contextmanager
from typing import Optional, Tuple

import torch
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper

from mmum.registry import OPTIM_WRAPPERS

# /proc/cpuinfo flags of the x86 instructions that compute bf16 products
# (AVX512-BF16: vdpbf16ps; AMX-BF16: tdpbf16ps); oneDNN uses either
BF16_FLAGS = ('amx_bf16', 'avx512_bf16')


def _cpuinfo_flags() -> set:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> Tuple[bool, str]:
    """Whether this CPU multiplies bf16 natively, and the evidence.

    Checks the ``amx_bf16`` / ``avx512_bf16`` flags of ``/proc/cpuinfo``,
    and torch's own probes (``torch.cpu._is_amx_tile_supported`` /
    ``_is_avx512_bf16_supported``, cpuinfo-based, any OS) where present.
    Without them bf16 autocast still runs, but oneDNN emulates the bf16
    products with fp32 instructions plus conversions, which gains nothing
    over fp32 (not measured here: this machine has AVX512-BF16).

    Returns:
        tuple: (native, reason) where ``reason`` names the features found or
        missing and torch's ATen CPU capability (e.g. ``AVX512``), for the
        log.
    """
    flags = _cpuinfo_flags()
    found = [f for f in BF16_FLAGS if f in flags]
    probes = dict(amx_bf16='_is_amx_tile_supported',
                  avx512_bf16='_is_avx512_bf16_supported')
    for flag, probe in probes.items():
        if flag not in found and getattr(torch.cpu, probe, bool)():
            found.append(flag)
    capability = torch.backends.cpu.get_cpu_capability()
    if found:
        return True, (f'this CPU computes bf16 natively ({", ".join(found)};'
                      f' ATen CPU capability {capability})')
    return False, ('this CPU has no native bf16 (neither '
                   f'{" nor ".join(BF16_FLAGS)}; ATen CPU capability '
                   f'{capability}): bf16 autocast would be emulated with '
                   'fp32 instructions and conversions')


_LOW = (torch.float16, torch.bfloat16)


def _nms_forward(forward):
    def wrapped(ctx, bboxes, scores, *args, **kwargs):
        if bboxes.dtype in _LOW and (bboxes.device.type == 'cpu'
                                     or bboxes.dtype == torch.bfloat16):
            bboxes, scores = bboxes.float(), scores.float()
        return forward(ctx, bboxes, scores, *args, **kwargs)
    wrapped.mmum_autocast = True
    return staticmethod(wrapped)


def _roi_align(roi_align):
    def wrapped(input, rois, *args, **kwargs):
        if input.dtype == torch.bfloat16 or input.dtype in _LOW and \
                input.device.type == 'cpu' and rois.dtype != input.dtype:
            out = roi_align(input.float(), rois.float(), *args, **kwargs)
            return out.to(input.dtype)  # autograd casts the gradient back
        return roi_align(input, rois, *args, **kwargs)
    wrapped.mmum_autocast = True
    return wrapped


def patch_mmcv_ops_for_autocast() -> None:
    """Let mmcv's detection ops take autocast's half-precision tensors.

    mmcv's compiled ``nms`` has float32 kernels only on CPU (``expected
    scalar type Float but found Half / BFloat16``), and ``roi_align`` none
    for bf16 on any device, so Mask R-CNN / HTC++ under CPU autocast (or
    CUDA bf16) stop in the RPN or the RoI extractor. This casts their
    inputs to float32 there (boxes and scores for the NMS, which returns
    indices; features and RoIs for RoIAlign, whose output goes back to the
    feature dtype, the gradient flowing through the cast). Idempotent; a
    no-op when mmcv's ops are not installed. CUDA fp16 is left as it is.
    """
    try:
        nms_module = importlib.import_module('mmcv.ops.nms')
        roi_module = importlib.import_module('mmcv.ops.roi_align')
    except ImportError:  # mmcv without ops: no detector to train
        return
    if not getattr(nms_module.NMSop.forward, 'mmum_autocast', False):
        nms_module.NMSop.forward = _nms_forward(nms_module.NMSop.forward)
    if not getattr(roi_module.roi_align, 'mmum_autocast', False):
        roi_module.roi_align = _roi_align(roi_module.roi_align)


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """``AmpOptimWrapper`` for CPU training: bf16 autocast where the CPU has
    native bf16, fp32 where it has not.

    The forward pass (data preprocessor, model, losses: mmengine's
    ``optim_context``) runs under ``torch.autocast('cpu',
    dtype=torch.bfloat16)``; parameters, gradients and optimizer states stay
    float32, and the parts of mmum's models that must stay float32 under
    autocast (targets, HOG, masks, loss weights) say so in their
    docstrings. bf16 has fp32's exponent range, so no loss scaling is
    needed: ``loss_scale`` is accepted for the AMP configs' sake and
    unused. The choice is made when the wrapper is built (see
    :func:`native_bf16`) and logged in one line through ``MMLogger``.

    Args:
        loss_scale: The AMP configs' loss scale; unused (bf16 needs none).
        dtype (str | torch.dtype, optional): None, ``'bfloat16'`` or
            ``'float16'``; always trained as bf16 where native (a CPU
            fp16 autocast would need a loss scaler and has no fast
            kernels on most CPUs), the log says so for ``'float16'``.
        use_fsdp (bool): Must be False (FSDP needs CUDA).
        **kwargs: ``OptimWrapper`` arguments (``optimizer``,
            ``accumulative_counts``, ``clip_grad``).

    Raises:
        ValueError: CUDA is available (use mmengine's ``AmpOptimWrapper``
            there), ``use_fsdp=True``, or an unknown ``dtype``.
    """

    def __init__(self, loss_scale=None, dtype=None, use_fsdp: bool = False,
                 **kwargs) -> None:
        if torch.cuda.is_available():
            raise ValueError(
                'mmum.CPUAmpOptimWrapper trains on the CPU; CUDA is available'
                ": use optim_wrapper.type='AmpOptimWrapper' (fp16 on the GPU)")
        if use_fsdp:
            raise ValueError('mmum.CPUAmpOptimWrapper: use_fsdp=True needs '
                             'CUDA; use use_fsdp=False on CPU')
        names = (None, 'bfloat16', 'float16', torch.bfloat16, torch.float16)
        if dtype not in names:
            raise ValueError(f'mmum.CPUAmpOptimWrapper: dtype={dtype!r} must '
                             "be None, 'bfloat16' or 'float16'")
        super().__init__(**kwargs)
        native, reason = native_bf16()
        self.cast_dtype: Optional[torch.dtype] = (torch.bfloat16
                                                  if native else None)
        if native:
            asked = '' if dtype in (None, 'bfloat16', torch.bfloat16) else \
                f' (dtype={dtype!r} asked; CPUs train bf16)'
            msg = (f'AmpOptimWrapper on CPU: training in bf16 autocast{asked}'
                   f' (mmum.CPUAmpOptimWrapper, no loss scaling): {reason}.')
        else:
            msg = ('AmpOptimWrapper on CPU: training in fp32 '
                   f'(mmum.CPUAmpOptimWrapper without autocast): {reason}.')
        if native:
            patch_mmcv_ops_for_autocast()
        logger = MMLogger.get_current_instance()
        (logger.info if native else logger.warning)(msg)

    @contextmanager
    def optim_context(self, model):
        """mmengine's context (gradient accumulation's ``no_sync``), plus
        bf16 CPU autocast where the CPU has native bf16."""
        with super().optim_context(model):
            if self.cast_dtype is None:
                yield
            else:
                with torch.autocast('cpu', dtype=self.cast_dtype):
                    yield

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads an optimizer state, also one saved by ``AmpOptimWrapper``
        (its loss scaler's state is dropped: no scaling here)."""
        state_dict = {k: v for k, v in state_dict.items()
                      if k != 'loss_scaler'}
        super().load_state_dict(state_dict)


__all__ = ['CPUAmpOptimWrapper', 'native_bf16', 'patch_mmcv_ops_for_autocast']

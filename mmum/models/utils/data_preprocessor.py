"""Data preprocessors that move a batch's masks to the device in one piece."""
from typing import Dict, Sequence

import torch
from mmpretrain.models.utils import SelfSupDataPreprocessor

from mmum.registry import MODELS


@MODELS.register_module()
class MaskedDataPreprocessor(SelfSupDataPreprocessor):
    """mmpretrain's ``SelfSupDataPreprocessor`` that moves each mask field
    of a batch as one tensor, from pinned memory, without blocking.

    mmengine would move every data sample's mask separately (one blocking
    copy per sample and field) and leave numpy fields on the host. Here the
    per-sample masks of each field in ``mask_keys`` are stacked on the host
    (B, ...), checked there (:meth:`host_masks`, where subclasses add their
    checks and derived tables), pinned when the target is an accelerator,
    and copied with ``non_blocking=True``; the images go the same way (the
    dataloader's ``pin_memory=True`` pins them in its own thread, otherwise
    they are pinned here). Each output data sample then holds its row of the
    device tensor (a view), so models read ``data_sample.mask`` as before
    and ``torch.stack`` of the rows is one device kernel. The input data
    samples are not changed.

    Args:
        mask_keys (Sequence[str]): Data-sample fields with one mask per
            sample (numpy array or tensor, the same shape in every sample).
            A field missing from the samples is left out. Defaults to
            ``('mask', )``.
        non_blocking (bool): Copy without waiting for the device. Defaults
            to True.
        **kwargs: ``SelfSupDataPreprocessor`` arguments (``mean``, ``std``,
            ``to_rgb``, ...).
    """

    def __init__(self, mask_keys: Sequence[str] = ('mask', ),
                 non_blocking: bool = True, **kwargs) -> None:
        super().__init__(non_blocking=non_blocking, **kwargs)
        if isinstance(mask_keys, str):
            mask_keys = (mask_keys, )
        self.mask_keys = tuple(mask_keys)

    def host_masks(self, masks: Dict[str, torch.Tensor]
                   ) -> Dict[str, torch.Tensor]:
        """Check (and extend) the stacked host masks before they move; the
        base class takes them as they are."""
        return masks

    def pinned(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in page-locked memory when the batch goes to an accelerator
        (a non-blocking copy from pageable memory would wait after all)."""
        if self.device.type == 'cpu' or t.device.type != 'cpu' or \
                t.is_pinned():
            return t
        return t.pin_memory()

    def forward(self, data: dict, training: bool = False) -> dict:
        samples = data.get('data_samples')
        masks = {}
        if samples:
            keys = [k for k in self.mask_keys if k in samples[0]]
            for k in keys:
                try:
                    masks[k] = torch.stack(
                        [torch.as_tensor(ds.get(k)) for ds in samples])
                except (RuntimeError, TypeError) as e:
                    shapes = [tuple(getattr(ds.get(k), 'shape', ()))
                              for ds in samples]
                    raise ValueError(
                        f'{type(self).__name__}: data-sample field {k!r} '
                        'must be one array of the same shape in every '
                        f'sample of the batch; got shapes {shapes}') from e
            masks = self.host_masks(masks)
            # the samples without the masks, so mmengine moves nothing else
            samples = [ds.new() for ds in samples]
            for ds in samples:
                for k in keys:
                    ds.pop(k)
        inputs = data['inputs']
        inputs = [self.pinned(x) for x in inputs] if isinstance(
            inputs, list) else self.pinned(inputs)
        out = super().forward(dict(inputs=inputs, data_samples=samples),
                              training)
        for k, v in masks.items():
            v = self.pinned(v).to(self.device, non_blocking=self._non_blocking)
            for ds, row in zip(out['data_samples'], v):
                ds.set_field(row, k)
        return out


@MODELS.register_module()
class UMMAEDataPreprocessor(MaskedDataPreprocessor):
    """:class:`MaskedDataPreprocessor` for UM-MAE's uniform masks
    (``mmum.UniformMasking``; UM-MAE, ViTFreeze on Swin).

    On the host, before anything moves, it checks that ``mask`` (B, h, w)
    leaves exactly one visible patch in every 2x2 cell (ValueError naming
    the sample and cell otherwise) and adds each sample's
    ``visible_index`` (h/2 * w/2,) int64 (:func:`mmum.models.selfsup.um_mae.
    visible_index`), so the model needs no check, and no host-device sync,
    in its step.

    Args:
        mask_keys (Sequence[str]): Defaults to
            ``('mask', 'secondary_mask')``.
        **kwargs: :class:`MaskedDataPreprocessor` arguments.
    """

    def __init__(self, mask_keys: Sequence[str] = ('mask', 'secondary_mask'),
                 **kwargs) -> None:
        super().__init__(mask_keys=mask_keys, **kwargs)

    def host_masks(self, masks: Dict[str, torch.Tensor]
                   ) -> Dict[str, torch.Tensor]:
        from mmum.models.selfsup.um_mae import visible_index
        if 'mask' in masks:
            masks['visible_index'] = visible_index(masks['mask'])
        return masks

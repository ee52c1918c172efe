from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_

from mmum.models.layers import init_as_released
from mmum.registry import MODELS
from .pvt import PVT, replace_with_mask_token


@MODELS.register_module()
class UMPVT(PVT):
    """PVT encoder of UM-MAE: runs on the compact H/2 x W/2 input (Fig. 2).

    Every 2x2 cell of the image keeps one ``unit``-px patch; packed together
    they form the compact input. A spatial-reduction window of ratio ``r`` at
    full size covers whole cells and pools exactly the visible patches in
    them, which on the compact input is a window of ratio ``r / 2``. So the
    encoder pools with ``max(r // 2, 1)`` -- {4, 2, 1, 1} for PVT's
    {8, 4, 2, 1} -- and the weights transfer unchanged to :class:`PVT`.
    Secondary-masked units get the learnable ``mask_token`` after the patch
    embedding, before the position embedding.

    The position table is built for the compact input (``img_size`` is the
    compact size, e.g. 128 for 256-px images); :class:`PVT` interpolates it
    to the fine-tuning size.

    Args:
        unit (int): Masking unit in pixels. Defaults to 16.
        **kwargs: Arguments of :class:`PVT`.
    """

    def __init__(self, *args, unit: int = 16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unit = unit
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims[0]))

    @property
    def compact_pools(self) -> Sequence[int]:
        return tuple(max(r // 2, 1) for r in self.sr_ratios)

    def init_weights(self) -> None:
        """As the release: mask token ``N(0, 0.02)``, Xavier-uniform
        linears and patch embedding (:func:`init_as_released`)."""
        super().init_weights()
        if not (isinstance(self.init_cfg, dict)
                and self.init_cfg.get('type') == 'Pretrained'):
            trunc_normal_(self.mask_token, std=.02)
            init_as_released(self, self.patch_embed.projection)

    def check_compact_input(self, hw, mask: torch.Tensor) -> None:
        H, W = hw
        cell = 2 * self.stride
        if H % self.stride or W % self.stride:
            raise ValueError(
                f'UM-MAE PVT: the compact input {H}x{W} (half the image) '
                f'must be a multiple of the encoder stride {self.stride}, '
                f'i.e. the image side a multiple of {cell} px (e.g. 256).')
        for i, r in enumerate(self.sr_ratios):
            px = r * 4 * 2**i  # full-size window in pixels (stride 4 * 2^i)
            if r > 1 and (px % (2 * self.unit) if i < 3 else r % 2):
                raise ValueError(
                    f'UM-MAE PVT: sr_ratios={self.sr_ratios}: the stage-{i + 1}'
                    f' reduction window ({r} tokens = {px} px) must cover '
                    f'whole 2x2 cells ({2 * self.unit} px) to be halved on the'
                    ' compact input (paper Fig. 2)')
        units = (H // self.unit, W // self.unit)
        if tuple(mask.shape[-2:]) != units:
            raise ValueError(
                f'UM-MAE PVT: mask of shape {tuple(mask.shape)} does not '
                f'match the compact input {H}x{W}: expected (B, {units[0]}, '
                f'{units[1]}), one entry per {self.unit}-px unit')

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> tuple:
        """x: compact input (B, 3, H/2, W/2); mask: (B, H/2u, W/2u), 1 = unit
        replaced by the mask token. Without ``mask`` this is a plain
        :class:`PVT` (full-size ratios)."""
        if mask is None:
            return super().forward(x)
        self.check_compact_input(x.shape[-2:], mask)
        x, hw = self.patch_embed(x)  # B, h*w, C0 at stride 4
        x = replace_with_mask_token(x, hw, mask, self.mask_token)
        return self.forward_stages(x + self.pos(hw), hw, self.compact_pools)

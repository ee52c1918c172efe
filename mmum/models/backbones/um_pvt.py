from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_

from mmum.models.layers import init_as_released
from mmum.models.layers.um_positions import original_positions
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
    embedding (which has no norm), before the position embedding.

    Positions (``img_size`` is the compact input size, e.g. 128 for 256-px
    images): with ``positions='original'`` (default) the sin-cos table is
    built for the original image (``2 * img_size``) and each visible patch
    gets the entry of its original position, as in the original-size
    pipeline of paper Fig. 2 and the released model; the forward then needs
    the visible patches' original ``index``. ``'compact'`` builds the table
    for the compact input and adds it on the compact grid (an ablation: the
    encoder cannot tell where a patch sits in its cell). :class:`PVT`
    interpolates either table to the fine-tuning size.

    Args:
        arch, img_size: as :class:`PVT`; ``img_size`` is the compact size.
        unit (int): Masking unit in pixels. Defaults to 16.
        positions (str): ``'original'`` or ``'compact'``. Defaults to
            ``'original'``.
        **kwargs: Arguments of :class:`PVT`.
    """

    def __init__(self, arch='small', img_size: int = 224, *args,
                 unit: int = 16, positions: str = 'original',
                 **kwargs) -> None:
        if positions not in ('original', 'compact'):
            raise ValueError(f"positions must be 'original' or 'compact', "
                             f'got {positions!r}')
        full = positions == 'original'
        super().__init__(arch, img_size * 2 if full else img_size, *args,
                         **kwargs)
        self.unit = unit
        self.positions = positions
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

    def pos_at(self, index: Optional[torch.Tensor],
               hw: Tuple[int, int]) -> torch.Tensor:
        """Position embedding of the compact tokens (h*w at stride 4):
        ``'original'``: the full-size (2h x 2w) table at each token's
        original position, (B, h*w, C0); ``'compact'``: the table on the
        compact grid, (1, h*w, C0)."""
        if self.positions == 'compact':
            return self.pos(hw)
        h, w = hw
        pos, _ = original_positions(index, hw,
                                    self.patch_embed.projection.stride[0],
                                    self.unit)  # B, h, w, 2
        table = self.pos((2 * h, 2 * w))[0]  # 4*h*w, C0
        return table[(pos[..., 0] * 2 * w + pos[..., 1]).flatten(1)]

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                index: Optional[torch.Tensor] = None) -> tuple:
        """x: compact input (B, 3, H/2, W/2); mask: (B, H/2u, W/2u), 1 = unit
        replaced by the mask token; index: (B, H/2u * W/2u) original unit of
        each compact unit (``visible_index``; needed with
        ``positions='original'``). Without ``mask`` this is a plain
        :class:`PVT` (full-size ratios)."""
        if mask is None:
            return super().forward(x)
        self.check_compact_input(x.shape[-2:], mask)
        if self.positions == 'original' and index is None:
            raise ValueError(
                "UMPVT(positions='original') needs the visible patches' "
                "original `index` (visible_index of the uniform mask); pass "
                "it, or use positions='compact'")
        x, hw = self.patch_embed(x)  # B, h*w, C0 at stride 4
        x = replace_with_mask_token(x, hw, mask, self.mask_token)
        return self.forward_stages(x + self.pos_at(index, hw), hw,
                                   self.compact_pools)

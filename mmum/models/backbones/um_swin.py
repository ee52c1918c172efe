from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_

from mmum.models.layers import init_as_released
from mmum.registry import MODELS
from .cpb_swin import CPBSwinTransformer


@MODELS.register_module()
class UMSwinTransformer(CPBSwinTransformer):
    """Swin encoder of UM-MAE: runs on the compact H/2 x W/2 input.

    The compact input holds the one visible ``unit``-px patch of every 2x2
    cell (paper Fig. 1d). Secondary-masked units are replaced by a learnable
    ``mask_token`` after the patch embedding. Windows are clamped (not
    padded) where a stage's map is smaller than the window.

    Args:
        unit (int): Size of a masking unit (16-px patch) in pixels.
            Defaults to 16.
        **kwargs: Arguments of :class:`CPBSwinTransformer`.
    """

    def __init__(self, *args, unit: int = 16, **kwargs) -> None:
        kwargs.setdefault('pad_small_map', False)
        super().__init__(*args, **kwargs)
        self.unit = unit
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))

    def init_weights(self) -> None:
        """As the release: mask token ``N(0, 0.02)``, Xavier-uniform
        linears and patch embedding (:func:`init_as_released`)."""
        super().init_weights()
        if isinstance(self.init_cfg, dict) and \
                self.init_cfg.get('type') == 'Pretrained':
            return
        trunc_normal_(self.mask_token, std=.02)
        init_as_released(self, self.patch_embed.projection)

    def check_compact_input(self, hw: Sequence[int]) -> None:
        """Check paper §3.1: the compact pipeline equals the sparse
        full-size one only if every (shifted) window covers whole units.

        A unit of the compact input is one 2x2 cell of the full image. At a
        stage of token stride ``r`` with (clamped) window ``w``, a window spans
        ``w*r`` px and a shifted window is offset by ``(w//2)*r`` px; both
        must be multiples of ``unit``, and the window must tile the map.
        """
        H, W = hw
        stride = self.patch_embed.projection.stride[0] * 2**(
            len(self.stages) - 1)
        if H % stride or W % stride:
            raise ValueError(
                f'UM-MAE Swin: the compact input {H}x{W} (half the image) '
                f'must be a multiple of the encoder stride {stride}, i.e. the'
                f' image side a multiple of {2 * stride} px (e.g. 256).')
        for i, stage in enumerate(self.stages):
            r = self.patch_embed.projection.stride[0] * 2**i
            size = min(H, W) // r
            window = stage.blocks[0].attn.window_size
            win = min(window, size)
            shifted = any(b.attn.shift_size for b in stage.blocks) and \
                win < size
            bad = (win * r) % self.unit or (H // r) % win or (W // r) % win \
                or (shifted and (win // 2 * r) % self.unit)
            if bad:
                raise ValueError(
                    f'UM-MAE Swin: window_size={window} breaks the '
                    f'compact-input equivalence (paper §3.1) at stage {i} '
                    f'(map {H // r}x{W // r}, token stride {r} px, window '
                    f'{win}): each window ({win * r} px) and its shift '
                    f'({win // 2 * r} px) must cover whole {self.unit}-px '
                    'units and the window must tile the map. Use a window '
                    'of 16*2^n px on the compact input, e.g. window_size=8 '
                    'at 256 px.')

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> tuple:
        """x: compact input (B, 3, H/2, W/2); mask: (B, H/2u, W/2u), 1 =
        unit replaced by the mask token. Without ``mask`` this is a plain
        :class:`CPBSwinTransformer` (e.g. for feature extraction)."""
        if mask is None:
            return super().forward(x)
        self.check_compact_input(x.shape[-2:])
        x, hw_shape = self.patch_embed(x)  # B, L, C with L = h*w tokens
        B, L, _ = x.shape
        scale = hw_shape[0] // mask.shape[-2]
        w = mask.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        w = w.flatten(1).unsqueeze(-1).type_as(x)  # B, L, 1
        x = x * (1. - w) + self.mask_token.expand(B, L, -1) * w
        x = self.drop_after_pos(x)

        outs = []
        for i, stage in enumerate(self.stages):
            x, hw_shape = stage(x, hw_shape, do_downsample=False)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(
                    out.view(-1, *hw_shape, self.num_features[i]).permute(
                        0, 3, 1, 2).contiguous())  # B, C_i, h_i, w_i
            if stage.downsample is not None:
                x, hw_shape = stage.downsample(x, hw_shape)
        return tuple(outs)

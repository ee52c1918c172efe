from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmum.models.layers import init_as_released
from mmum.registry import MODELS
from .um_mae_decoder import UMMAEPretrainDecoder


@MODELS.register_module()
class UMMAEEmbedFirstDecoder(UMMAEPretrainDecoder):
    """UM-MAE decoder in the layout of the official release, the default of
    mmum's UM-MAE configs: each token of the encoder's last map is embedded
    to ``upscale_factor**2 * decoder_embed_dim`` channels (768 -> 2048 for
    Swin-T) *before* PixelShuffle spreads them over the units (paper §3.3).

    Everything after the embedding is :meth:`UMMAEPretrainDecoder.decode`:
    each visible token sits at its own position among the mask tokens, and
    with ``target_index`` the last block computes only those queries.
    Initialised as released (:func:`init_as_released`: Xavier-uniform
    linears, zero biases). Official weights are imported by
    ``tools/model_converters/um_mae_official_to_mmum.py``.

    Args:
        upscale_factor (int): PixelShuffle factor. Defaults to 2.
        embed_dim (int): Channels of the encoder's last map. Defaults to 768.
        decoder_embed_dim (int): Channels per unit after PixelShuffle.
            Defaults to 512.
        **kwargs: Arguments of :class:`UMMAEPretrainDecoder`.
    """

    def __init__(self, upscale_factor: int = 2, embed_dim: int = 768,
                 decoder_embed_dim: int = 512, **kwargs) -> None:
        super().__init__(upscale_factor=upscale_factor, embed_dim=embed_dim,
                         decoder_embed_dim=decoder_embed_dim, **kwargs)
        self.decoder_embed = nn.Linear(
            embed_dim, upscale_factor**2 * decoder_embed_dim)

    def init_weights(self) -> None:
        super().init_weights()  # sin-cos positions, mask token N(0, 0.02)
        init_as_released(self)

    def forward(self, x: torch.Tensor, visible_index: torch.Tensor,
                target_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C, h, w); visible_index: (B, N); target_index: (B, M) or
        None. Returns (B, M or L, p*p*3)."""
        B, _, h, w = x.shape
        x = self.decoder_embed(x.flatten(2).transpose(1, 2))  # B, h*w, r^2 D
        x = F.pixel_shuffle(x.transpose(1, 2).reshape(B, -1, h, w),
                            self.upscale_factor)  # B, D, h*r, w*r
        grid = (2 * x.shape[2], 2 * x.shape[3])  # full grid: 2x2 cells/unit
        x = x.flatten(2).transpose(1, 2)  # B, N, D
        return self.decode(x, visible_index, target_index, grid)

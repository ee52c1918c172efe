from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmum.registry import MODELS
from .um_mae_decoder import UMMAEPretrainDecoder


@MODELS.register_module()
class UMMAEEmbedFirstDecoder(UMMAEPretrainDecoder):
    """:class:`UMMAEPretrainDecoder` with the order of the official UM-MAE
    release: each token of the encoder's last map is embedded to
    ``upscale_factor**2 * decoder_embed_dim`` channels *before* PixelShuffle
    spreads them over the units (``decoder_embed`` then ``decoder_expand``).
    Use it to run or fine-tune imported official weights
    (``tools/model_converters/um_mae_official_to_mmum.py``).
    """

    def __init__(self, upscale_factor: int = 2, embed_dim: int = 768,
                 decoder_embed_dim: int = 512, **kwargs) -> None:
        super().__init__(upscale_factor=upscale_factor, embed_dim=embed_dim,
                         decoder_embed_dim=decoder_embed_dim, **kwargs)
        self.decoder_embed = nn.Linear(
            embed_dim, upscale_factor**2 * decoder_embed_dim)

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

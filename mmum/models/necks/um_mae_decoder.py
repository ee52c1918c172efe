from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.models.necks import MAEPretrainDecoder

from mmum.models.grid import sincos_positions
from mmum.models.layers import block_shared_rows, blocks_at
from mmum.registry import MODELS


@MODELS.register_module()
class UMMAEPretrainDecoder(MAEPretrainDecoder):
    """Light MAE decoder of UM-MAE (paper §3.3).

    The encoder's last map (stride 32 on the compact input) is brought back to
    one token per masking unit with PixelShuffle; those tokens go to the
    positions of their visible patches in the full grid, mask tokens fill the
    dropped patches, and mmpretrain's MAE decoder blocks (fixed sin-cos
    positions, no class token) predict every patch's pixels.

    This layout (PixelShuffle first, then a ``C/r^2 -> D`` embedding: 192 ->
    512 for Swin-T) is an option; the released one, the default of the
    UM-MAE configs, embeds first: :class:`UMMAEEmbedFirstDecoder`.

    Args:
        upscale_factor (int): PixelShuffle factor from the encoder's last
            stride to the unit grid of the compact input. Defaults to 2.
        embed_dim (int): Channels of the encoder's last map; the decoder
            embeds ``embed_dim // upscale_factor**2`` channels per unit.
        **kwargs: Arguments of mmpretrain's ``MAEPretrainDecoder``.
    """

    def __init__(self, upscale_factor: int = 2, embed_dim: int = 768,
                 **kwargs) -> None:
        if embed_dim % upscale_factor**2:
            raise ValueError(f'embed_dim={embed_dim} must be divisible by '
                             f'upscale_factor**2={upscale_factor**2}')
        super().__init__(
            embed_dim=embed_dim // upscale_factor**2, **kwargs)
        self.upscale_factor = upscale_factor

    def forward(self, x: torch.Tensor, visible_index: torch.Tensor,
                target_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C, h, w) encoder map; visible_index: (B, N) position in the
        full patch grid of each unit of the compact input, row-major;
        target_index: (B, M) patches to predict (default: all).
        Returns per-patch predictions (B, M or num_patches, p*p*3)."""
        x = F.pixel_shuffle(x, self.upscale_factor)  # B, C/r^2, h*r, w*r
        grid = (2 * x.shape[2], 2 * x.shape[3])  # full grid: 2x2 cells/unit
        x = x.flatten(2).transpose(1, 2)  # B, N, C/r^2
        return self.decode(self.decoder_embed(x), visible_index, target_index,
                           grid)

    def decode(self, x: torch.Tensor, visible_index: torch.Tensor,
               target_index: Optional[torch.Tensor] = None,
               grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Decoder blocks and prediction from the embedded units.

        x: (B, N, D) one token per visible patch, in ``visible_index`` order.
        With ``target_index`` the last block runs only the queries of those
        patches (:func:`~mmum.models.layers.block_at`): exactly the same
        predictions there. The first block computes the dropped patches'
        LayerNorm and qkv once per batch
        (:func:`~mmum.models.layers.block_shared_rows`), as their input (mask
        token + position) is the same in every image. ``grid``: the full
        patch grid (h, w), default the square grid of ``num_patches``; the
        fixed sin-cos positions are computed for any other grid, so the
        decoder runs at any image size.
        """
        side = int(self.num_patches**.5)
        grid = tuple(grid or (side, side))
        if x.shape[1] != visible_index.shape[1]:
            raise ValueError(
                f'the encoder gives {x.shape[1]} units after PixelShuffle x'
                f'{self.upscale_factor} but the mask has '
                f'{visible_index.shape[1]} visible patches')
        pos = (self.decoder_pos_embed[0, 1:] if grid == (side, side) and
               side * side == self.num_patches else sincos_positions(
                   grid, x.shape[-1])[0]).to(x)  # L, D; no class token
        # a dropped patch's input, the same in every image: the first block
        # computes its LayerNorm and qkv once per batch
        shared = self.mask_token.to(x.dtype)[0] + pos  # L, D
        first, *rest = list(self.decoder_blocks) or [None]
        x = block_shared_rows(first, x + pos[visible_index], visible_index,
                              shared)  # B, L, D
        x = blocks_at(rest, x, target_index)  # B, L or M, D
        return self.decoder_pred(self.decoder_norm(x))  # B, L or M, p*p*3

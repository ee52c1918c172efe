"""One local decoder of LocalMIM: visible tokens -> predictions at a scale."""
import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmpretrain.models.backbones.vision_transformer import \
    TransformerEncoderLayer
from mmpretrain.models.utils import LayerNorm2d
from torch import nn

from mmum.registry import MODELS


def released_sincos(grid: Tuple[int, int], dims: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions of MAE / the released LocalMIM:
    (1, 1 + h * w, dims), a zero class-token row, then patch ``(r, c)``
    (row-major) gets ``[sin(c w), cos(c w), sin(r w), cos(r w)]`` with
    ``w_i = 10000^(-i / (dims / 4))``. mmpretrain's
    ``build_2d_sincos_position_embedding`` is its row/column transpose
    (rows in the first half).
    """
    if dims % 4:
        raise ValueError(f'released_sincos: dims={dims} must be a multiple '
                         'of 4')
    h, w = grid
    omega = 1. / 10000**(torch.arange(dims // 4, dtype=torch.float64) /
                         (dims // 4))
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64),
        torch.arange(w, dtype=torch.float64), indexing='ij')
    out = [p.flatten()[:, None] * omega for p in (cols, rows)]
    emb = torch.cat([f(o) for o in out for f in (torch.sin, torch.cos)], 1)
    return torch.cat([emb.new_zeros(1, dims), emb]).float()[None]


def resize_head(embed_dims: int, up: float) -> Tuple[nn.Sequential, int]:
    """Released LocalMIM's head from the patch grid to the target grid.

    ``up`` = 2^k > 1: k stride-2 2x2 transposed convolutions, each halving
    the channels, with a channel LayerNorm (eps 1e-6) and GELU between two of
    them (56² from 14²: 256 -> 128, LN, GELU, -> 64; 28²: 256 -> 128);
    ``up`` = 1: nothing; ``up`` = 1/n: n x n average pooling. Returns the
    head and its output channels (the 1x1 prediction's input).
    """
    layers, dims = [], embed_dims
    if up > 1:
        for i in range(round(math.log2(up))):
            if i:
                layers += [LayerNorm2d(dims, eps=1e-6), nn.GELU()]
            layers.append(nn.ConvTranspose2d(dims, dims // 2, 2, 2))
            dims //= 2
    elif up < 1:
        layers.append(nn.AvgPool2d(round(1 / up)))
    return nn.Sequential(*layers), dims


@MODELS.register_module()
class LocalMIMDecoder(BaseModule):
    """MAE-style light decoder that predicts a target map of ``out_size``,
    as the released LocalMIM decoder.

    Visible tokens are normalised (LayerNorm eps 1e-6) and embedded,
    completed with mask tokens, put back in image order, given the fixed
    sin-cos positions, passed through one transformer block, normalised,
    laid out as the ``grid`` of patches, resized to ``out_size`` by
    :func:`resize_head` (transposed convolutions for finer scales, average
    pooling for coarser ones) and projected by a 1x1 convolution.

    Args:
        in_channels (int): Encoder width.
        grid (int | tuple): Patch grid of the encoder, e.g. 14 for ViT-B/16.
        out_size (int | tuple): Target grid, e.g. 56: the grid times 2^k or
            divided by an integer.
        out_channels (int): Target channels per cell, e.g. 27 for HOG.
        embed_dims (int): Decoder width. Defaults to 256.
        num_heads (int): Defaults to 8.
        mlp_ratio (float): Defaults to 4.

    Raises:
        ValueError: an ``out_size`` that is not such a multiple or divisor
            of ``grid``, or ``embed_dims`` not divisible by 2^k.
    """

    def __init__(self,
                 in_channels: int,
                 grid: Union[int, Tuple[int, int]],
                 out_size: Union[int, Tuple[int, int]],
                 out_channels: int,
                 embed_dims: int = 256,
                 num_heads: int = 8,
                 mlp_ratio: float = 4.,
                 init_cfg=None) -> None:
        super().__init__(init_cfg)
        self.grid = tuple(grid) if isinstance(grid, (tuple, list)) else (
            grid, grid)
        self.out_size = out_size = tuple(out_size) if isinstance(
            out_size, (tuple, list)) else (out_size, out_size)
        up = [o / g for o, g in zip(out_size, self.grid)]
        if up[0] != up[1] or not (
                up[0] >= 1 and math.log2(up[0]).is_integer()
                and embed_dims % up[0] == 0 or
                up[0] < 1 and (1 / up[0]).is_integer()):
            raise ValueError(
                f'LocalMIMDecoder: out_size={out_size} must be the patch grid '
                f'{self.grid} times the same power of 2 (dividing embed_dims='
                f'{embed_dims}) or divided by the same integer')
        self.norm_in = nn.LayerNorm(in_channels, eps=1e-6)
        self.embed = nn.Linear(in_channels, embed_dims)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.register_buffer(
            'pos_embed', released_sincos(self.grid, embed_dims),
            persistent=False)  # (1, 1 + N, D), fixed
        self.block = TransformerEncoderLayer(
            embed_dims, num_heads, int(mlp_ratio * embed_dims),
            norm_cfg=dict(type='LN', eps=1e-6))
        self.norm = nn.LayerNorm(embed_dims, eps=1e-6)
        self.resize, dims = resize_head(embed_dims, up[0])
        self.pred = nn.Conv2d(dims, out_channels, 1)

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.normal_(self.mask_token, std=.02)

    def forward(self, x: torch.Tensor,
                ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + L_vis, C) class + visible tokens, (B, N) restore order ->
        (B, out_h * out_w, out_channels)."""
        B, N = ids_restore.shape
        if N != self.grid[0] * self.grid[1]:
            raise ValueError(
                f'{type(self).__name__} was built for a {self.grid[0]}x'
                f'{self.grid[1]} patch grid but got {N} patches; build it '
                'for the grid of the images (the encoder\'s img_size)')
        x = self.embed(self.norm_in(x))  # (B, 1 + L_vis, D)
        D = x.shape[-1]
        mask_tokens = self.mask_token.expand(B, N + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, N, D)
        patches = torch.gather(patches, 1,
                               ids_restore[..., None].expand(-1, -1, D))
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        return self.decode(self.block(x)[:, 1:])

    def decode(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """(B, N, D) tokens of the patch ``grid`` (default: the built one)
        -> (B, out_h * out_w, out_channels)."""
        x = self.norm(x).transpose(1, 2).reshape(x.shape[0], -1,
                                                 *(grid or self.grid))
        x = self.pred(self.resize(x))  # (B, out_channels, out_h, out_w)
        return x.flatten(2).transpose(1, 2)


@MODELS.register_module()
class LocalMIMCompactDecoder(LocalMIMDecoder):
    """:class:`LocalMIMDecoder` for one stage of a hierarchical encoder run
    on UM-MAE's compact image (one visible patch per 2x2 cell).

    The stage map is brought to one token per visible patch (space-to-depth
    where it is finer, repetition where it is coarser), and the tokens go
    back to their places in the full patch grid among mask tokens. It runs
    at any image size: the grid and its sin-cos positions follow the input
    (the output keeps its ratio ``out_size / grid``).

    Args:
        in_channels (int): Channels of the stage.
        unit_ratio (float): Map cells per visible patch along a side, e.g.
            4, 2, 1, 0.5 for the four stages of Swin with 16-px patches.
        **kwargs: :class:`LocalMIMDecoder` arguments.
    """

    def __init__(self, in_channels: int, unit_ratio: float, **kwargs) -> None:
        if not (float(unit_ratio).is_integer() or
                (1 / unit_ratio).is_integer()):
            raise ValueError(f'LocalMIMCompactDecoder: unit_ratio='
                             f'{unit_ratio} must be an integer or 1/integer')
        self.unit_ratio = unit_ratio
        if unit_ratio > 1:
            in_channels *= int(unit_ratio)**2
        super().__init__(in_channels=in_channels, **kwargs)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) stage map, (B, N_vis) full-grid index of each visible
        patch (row-major, as the compact image) -> (B, out_h * out_w,
        out_channels)."""
        if self.unit_ratio > 1:
            x = F.pixel_unshuffle(x, int(self.unit_ratio))
        elif self.unit_ratio < 1:
            x = F.interpolate(x, scale_factor=int(1 / self.unit_ratio))
        # full patch grid of this input: one visible patch per 2x2 cell
        grid = (2 * x.shape[-2], 2 * x.shape[-1])
        x = self.embed(self.norm_in(x.flatten(2).transpose(1, 2)))
        B, _, D = x.shape  # (B, N_vis, D)
        # in the embedding's dtype: under autocast x is fp16/bf16 while the
        # mask token stays an fp32 parameter, and scatter needs one dtype
        full = self.mask_token.to(x.dtype).repeat(B, grid[0] * grid[1], 1)
        full = full.scatter(1, index[..., None].expand(-1, -1, D), x)
        # fixed sin-cos positions, computed for another image size's grid
        pos = self.pos_embed[:, 1:] if grid == self.grid else \
            released_sincos(grid, D)[:, 1:].to(full)
        return self.decode(self.block(full + pos), grid)

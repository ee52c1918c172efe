"""2x2 patch merging as a strided convolution (UM-MAE's release)."""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvPatchMerging(nn.Module):
    """LayerNorm over each token's channels, then a 2x2 stride-2 conv.

    The layout of the official UM-MAE Swin (``blocks.{i}.downsample.norm``,
    ``.proj``); mmpretrain's ``PatchMerging`` instead normalises the
    concatenated 2x2 neighbourhood (4C), so its weights are not
    interchangeable with these. Odd maps are zero-padded at the bottom and
    right, as ``PatchMerging`` does.

    Drop-in for ``PatchMerging``: ``forward(x, hw) -> (x, out_hw)``.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm = nn.LayerNorm(in_channels, eps=eps)
        self.proj = nn.Conv2d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor,
                hw: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        B, _, C = x.shape
        x = self.norm(x).transpose(1, 2).reshape(B, C, *hw)
        x = F.pad(x, (0, hw[1] % 2, 0, hw[0] % 2))
        x = self.proj(x)  # B, 2C, h/2, w/2
        return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])

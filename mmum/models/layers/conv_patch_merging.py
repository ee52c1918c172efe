"""2x2 patch merging as a strided convolution (UM-MAE's release)."""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def merge_2x2(x: torch.Tensor, hw: Tuple[int, int], weight: torch.Tensor,
              bias=None) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """A 2x2 stride-2 convolution of a token map, computed on the tokens.

    Equals ``F.conv2d(F.pad(m, (0, W % 2, 0, H % 2)), weight, bias,
    stride=2)`` with ``m = x.transpose(1, 2).reshape(B, C, H, W)``, returned
    as tokens, to float rounding: odd maps are zero-padded at the bottom and
    right, as mmpretrain's ``PatchMerging`` does.

    The convolution is one linear map of each 2x2 neighbourhood, so it runs
    as a single GEMM on the gathered neighbourhoods: no token <-> NCHW
    transposes and no per-call weight reorder (on CPU these cost more than
    the convolution itself once the map is small, e.g. 12 vs 3 ms for
    Swin-T's last merge at batch 2). Gathering the neighbourhoods copies
    the input; it is cheapest in (kh, kw, C) order, which also needs the
    weight reordered, so that order is taken when the weight is the smaller
    tensor and the weight's own (C, kh, kw) order otherwise. As the choice
    looks at the whole batch, the same image may round differently in
    batches of different sizes (float rounding only).

    Args:
        x (Tensor): (B, H*W, C) tokens, row-major.
        hw (tuple): (H, W).
        weight (Tensor): (C_out, C, 2, 2) convolution weight.
        bias (Tensor, optional): (C_out,).
    Returns:
        tuple: (B, ceil(H/2) * ceil(W/2), C_out) tokens and their (h, w).
    Raises:
        ValueError: if ``x`` is not (B, H*W, C) for ``hw``, ``weight`` not
            (C_out, C, 2, 2) or ``bias`` not (C_out,).
    """
    B, L, C = x.shape if x.dim() == 3 else (None, None, None)
    H, W = hw
    if L != H * W or tuple(weight.shape[1:]) != (C, 2, 2) or (
            bias is not None and tuple(bias.shape) != weight.shape[:1]):
        raise ValueError(
            f'merge_2x2 needs (B, H*W, C) tokens, a (C_out, C, 2, 2) weight '
            f'and a (C_out,) bias; got tokens {tuple(x.shape)} for '
            f'hw={tuple(hw)}, weight {tuple(weight.shape)}, bias '
            f'{None if bias is None else tuple(bias.shape)}')
    x = x.reshape(B, H, W, C)
    if H % 2 or W % 2:
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    h, w = x.shape[1] // 2, x.shape[2] // 2
    x = x.view(B, h, 2, w, 2, C)
    if weight.numel() < x.numel():  # reorder the weight: (kh, kw, C) inputs
        x = x.permute(0, 1, 3, 2, 4, 5)  # B, h, w, 2, 2, C
        weight = weight.permute(0, 2, 3, 1)  # C_out, 2, 2, C
    else:  # reorder the input to the weight's (C, kh, kw)
        x = x.permute(0, 1, 3, 5, 2, 4)  # B, h, w, C, 2, 2
    x = F.linear(x.reshape(B, h * w, 4 * C), weight.reshape(len(weight), -1),
                 bias)  # B, h*w, C_out
    return x, (h, w)


class ConvPatchMerging(nn.Module):
    """LayerNorm over each token's channels, then a 2x2 stride-2 conv.

    The layout of the official UM-MAE Swin (``blocks.{i}.downsample.norm``,
    ``.proj``); mmpretrain's ``PatchMerging`` instead normalises the
    concatenated 2x2 neighbourhood (4C), so its weights are not
    interchangeable with these. Odd maps are zero-padded at the bottom and
    right, as ``PatchMerging`` does. The conv runs on the tokens
    (:func:`merge_2x2`).

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
        """x: (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), out_channels), (h, w).
        """
        return merge_2x2(self.norm(x), hw, self.proj.weight, self.proj.bias)

"""Where the tokens of UM-MAE's compact input sit in the original image.

The compact input (paper §3.1, Fig. 1d) packs the one visible ``unit``-px
patch of every 2x2 cell: compact unit ``(i, j)`` is the original unit
``index[:, i * wu + j]`` (``mmum.models.selfsup.um_mae.visible_index``, a
flat index into the original ``2hu x 2wu`` unit grid). The encoders use it
to give each token the position it has in the original-size pipeline
(paper Figs. 2, 3) instead of its place in the compact image.
"""
from typing import Sequence, Tuple

import torch


def original_positions(index: torch.Tensor, hw: Sequence[int], stride: int,
                       unit: int) -> Tuple[torch.Tensor, int]:
    """Original-image position of every token of a compact token map.

    A token of ``stride`` px at compact row ``r`` starts at compact pixel
    ``r * stride``: in compact unit ``r * stride // unit``, at offset
    ``r * stride % unit`` inside it. Its original pixel is the original row
    of that unit times ``unit`` plus the offset (columns alike). Positions
    are that pixel divided by ``stride``, i.e. in tokens of this stage, as
    the released UM-MAE Swin tracks them (integer at stride 4, halved at
    each patch merging). A token wider than a unit (``stride > unit``, the
    last Swin stage) merges units of ``k = stride // unit`` cells per side
    and takes the position of its top-left unit, a multiple of ``1 / k``.

    Args:
        index (Tensor): (B, hu * wu) long, original unit of each compact
            unit, row-major; the original grid is ``2hu x 2wu`` units.
        hw (Sequence[int]): (h, w) token grid of the compact map.
        stride (int): Token size of the map in pixels.
        unit (int): Masking unit in pixels; ``stride`` and ``unit`` must
            divide one another.

    Returns:
        tuple: ``(pos, k)``: pos (B, h, w, 2) int32 (row, col) positions in
        steps of ``1 / k`` token, and ``k = max(1, stride // unit)``.

    Raises:
        ValueError: if ``index`` does not have one entry per compact unit or
            ``stride`` and ``unit`` do not divide one another.
    """
    h, w = hw
    if stride % unit and unit % stride:
        raise ValueError(f'token stride {stride} px and masking unit {unit} '
                         'px must divide one another')
    hu, wu = h * stride // unit, w * stride // unit
    if index.dim() != 2 or index.shape[1] != hu * wu:
        raise ValueError(
            f'visible index of shape {tuple(index.shape)} does not match the '
            f'compact map ({h}x{w} tokens of {stride} px = {hu}x{wu} units '
            f'of {unit} px): expected (B, {hu * wu})')
    B = index.shape[0]
    k = max(1, stride // unit)
    rows = torch.arange(h, device=index.device) * stride  # compact px
    cols = torch.arange(w, device=index.device) * stride
    units = (rows // unit).view(-1, 1) * wu + (cols // unit).view(1, -1)
    orig = index[:, units.flatten()].view(B, h, w)  # original unit
    y = orig // (2 * wu) * unit + (rows % unit).view(1, -1, 1)  # orig. px
    x = orig % (2 * wu) * unit + (cols % unit).view(1, 1, -1)
    return (torch.stack([y, x], -1) * k // stride).to(torch.int32), k

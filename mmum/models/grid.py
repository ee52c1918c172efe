"""Patch grids of models built for one image size.

* :func:`check_grid`: a clear error, naming both grids, where a model can only
  run on the grid it was built for (a learned or fixed position table of that
  size), instead of a shape or index error deep in torch.
* :func:`sincos_positions`: MAE's fixed 2-D sin-cos position table for any
  ``h x w`` grid, so decoders with fixed positions run at any image size.
"""
from typing import Sequence

import torch
from mmpretrain.models.utils import build_2d_sincos_position_embedding


def check_grid(module, img_hw: Sequence[int], grid: Sequence[int],
               stride: Sequence[int]) -> None:
    """Raise ``ValueError`` unless an ``img_hw`` (H, W) image gives the
    ``grid`` (h, w) of ``stride`` (sy, sx)-pixel patches ``module`` was
    built for."""
    H, W = (int(s) for s in img_hw)
    got = (H // stride[0], W // stride[1])
    if got != tuple(grid):
        raise ValueError(
            f'{type(module).__name__} was built for a {grid[0]}x{grid[1]} '
            f'patch grid ({grid[0] * stride[0]}x{grid[1] * stride[1]} px '
            f'images, its img_size) but got a {H}x{W} image ({got[0]}x'
            f'{got[1]} patches of {stride[0]}x{stride[1]} px). Resize the '
            f'images to {grid[0] * stride[0]}x{grid[1] * stride[1]} or build '
            f'the model with img_size={H if H == W else (H, W)}.')


def sincos_positions(grid: Sequence[int], dims: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions of an ``h x w`` grid, row-major: (1, h*w,
    dims); the first half of the channels encodes the row, the second the
    column, as in the square tables of mmpretrain's MAE (equal to them for
    ``h == w``)."""
    h, w = grid
    # mmpretrain's builder enumerates (w, h) column-major, i.e. a grid given
    # as (w, h) comes out row-major over h rows and w columns
    return build_2d_sincos_position_embedding((w, h), dims)

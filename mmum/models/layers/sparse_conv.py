"""Sparse convolutions on the visible tokens of a masked feature map
(GreenMIM §3.2, "Incorporating with Sparse Convolution"), in pure PyTorch.

A sparse map is a token tensor ``x`` (B, N, C) plus the grid positions
``coords`` (N, 2 = row, col, row-major order) of its *active* sites, shared
by the batch (GreenMIM's batch-wise mask, §3.5); every other site of the
(H, W) map counts as zero. Two operations cover Twins:

- :func:`sparse_strided_conv`: a convolution whose kernel equals its stride
  (patch embeddings, the spatial-reduction convolution of global
  sub-sampled attention). It is computed at the output sites that have at
  least one active input site (a regular sparse convolution), and equals the
  dense convolution of the zero-filled map read at those sites.
- :func:`submanifold_dwconv3x3`: a depth-wise 3x3 convolution, stride 1,
  padding 1 (Twins' position-encoding generator), computed at the active
  sites only (a submanifold convolution); inactive neighbours count as zero,
  so it equals the dense convolution of the zero-filled map read at the
  active sites.

The index tensors come from :func:`build_strided_index` and
:func:`build_neighbour_index`, vectorised; they read ``coords`` (bounds
checks, ``unique``), so they run on the host, before the step
(``GreenTwins.plan``), and reach the device with the rest of the step's
plan. The convolutions loop at most over the kernel offsets, never over
tokens. Missing inputs point at index ``N``, a
zero row appended to ``x``.
"""
from typing import Tuple

import torch
import torch.nn.functional as F


def _lookup_table(coords: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(H*W + 1,) token of every grid position, N for inactive ones and for
    the extra last entry (used for neighbours outside the map)."""
    H, W = hw
    N = coords.shape[0]
    lut = coords.new_full((H * W + 1, ), N)
    lut[coords[:, 0] * W + coords[:, 1]] = torch.arange(
        N, device=coords.device)
    return lut


def _check_coords(coords: torch.Tensor, hw: Tuple[int, int]) -> None:
    if coords.dim() != 2 or coords.shape[1] != 2 or coords.dtype not in (
            torch.int32, torch.int64):
        raise ValueError(f'coords must be an integer (N, 2) tensor of '
                         f'(row, col) positions, got {coords.dtype} '
                         f'{tuple(coords.shape)}')
    if coords.numel() and (coords.min() < 0 or coords[:, 0].max() >= hw[0]
                           or coords[:, 1].max() >= hw[1]):
        raise ValueError(f'coords must lie inside the {hw[0]}x{hw[1]} map')


def build_strided_index(
        coords: torch.Tensor, hw: Tuple[int, int], kernel: int
) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
    """Index of a sparse convolution with kernel = stride = ``kernel``.

    Args:
        coords: (N, 2) int, active input sites (row, col), no duplicates.
        hw: input map size (H, W); both must be multiples of ``kernel``.
        kernel: kernel size = stride.

    Returns:
        ``(index, out_coords, out_hw)``: index (M, kernel**2) long, the input
        token under each kernel offset (row-major offsets, N = inactive) of
        each output site; out_coords (M, 2) the output sites with at least
        one active input, row-major; out_hw = (H / kernel, W / kernel).

    Raises:
        ValueError: bad ``coords``, or a map that is not a multiple of the
        kernel (the dense layer would crop or pad it).
    """
    H, W = hw
    if kernel < 1 or H % kernel or W % kernel:
        raise ValueError(f'map {H}x{W} must be a multiple of the kernel = '
                         f'stride {kernel}')
    _check_coords(coords, hw)
    h, w = H // kernel, W // kernel
    cell = torch.div(coords, kernel, rounding_mode='floor')
    cells = torch.unique(cell[:, 0] * w + cell[:, 1])  # sorted: row-major
    out = torch.stack([cells // w, cells % w], 1)  # M, 2
    d = torch.arange(kernel, device=coords.device)
    off = torch.stack(torch.meshgrid(d, d, indexing='ij'), -1).view(-1, 2)
    pos = out[:, None] * kernel + off  # M, k*k, 2
    index = _lookup_table(coords, hw)[pos[..., 0] * W + pos[..., 1]]
    return index, out, (h, w)


def sparse_strided_conv(x: torch.Tensor, index: torch.Tensor,
                        weight: torch.Tensor,
                        bias: torch.Tensor = None) -> torch.Tensor:
    """Convolution with kernel = stride on a sparse map.

    Args:
        x: (B, N, C_in) active tokens.
        index: (M, k*k) from :func:`build_strided_index` (on x's device).
        weight: (C_out, C_in, k, k) of the dense ``nn.Conv2d``.
        bias: (C_out,) or None.

    Returns:
        (B, M, C_out): the dense convolution of the zero-filled map at the
        output sites ``out_coords``.
    """
    B, N, C = x.shape
    C_out, C_in, kh, kw = weight.shape
    if C != C_in or index.shape[1] != kh * kw:
        raise ValueError(f'x has {C} channels and index {index.shape[1]} '
                         f'offsets; the weight wants {C_in} and {kh * kw}')
    x = torch.cat([x, x.new_zeros(B, 1, C)], 1)[:, index]  # B, M, k*k, C
    # channel-major like the weight (C_out, C_in*kh*kw), a view of the
    # parameter: autograd then keeps no weight-sized copy per call
    x = x.transpose(2, 3).reshape(B, -1, C * kh * kw)
    return F.linear(x, weight.view(C_out, -1), bias)  # B, M, C_out


def build_neighbour_index(coords: torch.Tensor,
                          hw: Tuple[int, int]) -> torch.Tensor:
    """(N, 9) long: the token at each 3x3 neighbour (offsets (dy, dx) in
    row-major order, dy, dx in -1..1) of every active site, N where the
    neighbour is inactive or outside the (H, W) map."""
    H, W = hw
    _check_coords(coords, hw)
    d = torch.arange(-1, 2, device=coords.device)
    off = torch.stack(torch.meshgrid(d, d, indexing='ij'), -1).view(-1, 2)
    pos = coords[:, None] + off  # N, 9, 2
    inside = ((pos >= 0) & (pos < pos.new_tensor([H, W]))).all(-1)
    flat = torch.where(inside, pos[..., 0] * W + pos[..., 1], H * W)
    return _lookup_table(coords, hw)[flat]


def _dw_gather_sum(x: torch.Tensor, index: torch.Tensor,
                   weight9: torch.Tensor) -> torch.Tensor:
    """sum_k x[:, index[:, k]] * weight9[k] with a zero row at index N."""
    B, N, C = x.shape
    x = torch.cat([x, x.new_zeros(B, 1, C)], 1)
    out = x[:, index[:, 0]] * weight9[0]
    for k in range(1, index.shape[1]):  # the 9 kernel offsets
        out += x[:, index[:, k]] * weight9[k]
    return out


class _SubmanifoldDWConv(torch.autograd.Function):
    """Saves only x (not the 9 shifted copies): the input gradient is the
    same gather with the kernel flipped (offset k of site i is offset 8-k
    of its neighbour), the weight gradient is recomputed offset by offset."""

    @staticmethod
    def forward(ctx, x, index, weight9, bias):
        ctx.save_for_backward(x, index, weight9)
        ctx.dtypes = weight9.dtype, None if bias is None else bias.dtype
        out = _dw_gather_sum(x, index, weight9.to(x.dtype))
        return out if bias is None else out + bias.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, index, weight9 = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _dw_gather_sum(grad, index,
                                    weight9.to(grad.dtype).flip(0))
        if ctx.needs_input_grad[2]:
            B, N, C = x.shape
            xz = torch.cat([x, x.new_zeros(B, 1, C)], 1)
            grad_w = torch.stack([
                (grad * xz[:, index[:, k]]).sum((0, 1))
                for k in range(index.shape[1])
            ]).to(ctx.dtypes[0])
        if ctx.dtypes[1] is not None and ctx.needs_input_grad[3]:
            grad_b = grad.sum((0, 1)).to(ctx.dtypes[1])
        return grad_x, None, grad_w, grad_b


def submanifold_dwconv3x3(x: torch.Tensor, index: torch.Tensor,
                          weight: torch.Tensor,
                          bias: torch.Tensor = None) -> torch.Tensor:
    """Depth-wise 3x3 convolution (stride 1, padding 1) at the active sites.

    Args:
        x: (B, N, C) active tokens.
        index: (N, 9) from :func:`build_neighbour_index` (on x's device).
        weight: (C, 1, 3, 3) of the dense ``nn.Conv2d(C, C, 3, groups=C)``.
        bias: (C,) or None.

    Returns:
        (B, N, C): the dense convolution of the zero-filled map at the active
        sites. Backward keeps only ``x`` and the index, not 9 shifted copies.
    """
    C = x.shape[-1]
    if weight.shape != (C, 1, 3, 3) or index.shape != (x.shape[1], 9):
        raise ValueError(f'expected a (C={C}, 1, 3, 3) depth-wise weight and '
                         f'a ({x.shape[1]}, 9) index, got '
                         f'{tuple(weight.shape)} and {tuple(index.shape)}')
    return _SubmanifoldDWConv.apply(x, index, weight.view(C, 9).t(), bias)


__all__ = [
    'build_strided_index', 'sparse_strided_conv', 'build_neighbour_index',
    'submanifold_dwconv3x3'
]

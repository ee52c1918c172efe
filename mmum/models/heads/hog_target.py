"""Multi-scale HOG targets of LocalMIM (Wang et al., CVPR 2023), with the
conventions of the released LocalMIM / ViTFreeze code."""
import math
from functools import reduce
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmum.models.layers import autocast_off
from mmum.registry import MODELS


@MODELS.register_module()
class HOGTarget(BaseModule):
    """Histograms of oriented gradients at several cell sizes.

    Computed on the image as the model receives it (after the data
    preprocessor's normalisation), separately for each colour channel:

    1. Sobel filter with reflected borders: ``gx`` = left minus right column
       and ``gy`` = top minus bottom row of the 3x3 window, each weighted
       (1, 2, 1) across the difference.
    2. Orientation ``atan2(gx, gy)``, i.e. measured from the y-axis, in
       (-pi, pi]; hard binning: bin = floor(angle / pi * nbins) mod nbins
       (no interpolation between bins). A gradient and its opposite share a
       bin (unsigned orientation). With 9 bins, intensity changing along x
       (a vertical edge) lands in bin 4, along y (a horizontal edge) in
       bin 0, along the diagonal in bin 2.
    3. Magnitude ``sqrt(gx^2 + gy^2)`` summed per bin over each cell, and
       every histogram (one channel, one cell) L2-normalised (a cell without
       gradient stays 0).

    These are the released code's conventions (its ``HOGLayer``), which
    also equal mmpretrain's MaskFeat ``HOGGenerator`` with
    ``gaussian_window=0``. That generator is not used here because it cannot
    give this target: it returns its histograms regrouped per patch of a
    14 x 14 grid (``_reshape`` hard-codes 14: (B, 196, 27 k²) instead of
    (B, cells, 27) in row-major order, and a map smaller than 14 x 14, e.g.
    the 7² target, raises), and it takes one cell size per instance, so
    four scales would compute the gradients four times. Here the
    histograms of the smallest asked-for cell are computed once (one
    scatter, no loop over pixels or bins) and summed into the larger cells.
    Summing instead of the released average pooling changes nothing after
    the L2 normalisation. The gradients are taken in float64, i.e. exactly:
    the released float32 convolution can turn a gradient component that is
    exactly 0 into +-1e-7 depending on the backend's summation order, which
    moves that pixel between bins 0 and ``nbins - 1`` or gives a flat cell
    a noise histogram (the only places the two targets differ; the released
    ``HOGLayer`` run in float64 equals this one).

    Args:
        cell_sizes (Sequence[int]): Cell sizes in pixels, each a multiple of
            the smallest. Defaults to (4, 8, 16, 32) (56², 28², 14², 7²
            targets for 224² images).
        nbins (int): Orientation bins over [0, pi). Defaults to 9.

    Raises:
        ValueError: cell sizes that are not positive multiples of the
            smallest, ``nbins`` < 1.
    """

    def __init__(self, cell_sizes: Sequence[int] = (4, 8, 16, 32),
                 nbins: int = 9) -> None:
        super().__init__()
        cell_sizes = tuple(cell_sizes)
        if not cell_sizes or any(
                c <= 0 or c % min(cell_sizes) for c in cell_sizes):
            raise ValueError(f'HOGTarget: cell_sizes={cell_sizes} must be '
                             'positive multiples of the smallest one')
        if nbins < 1:
            raise ValueError(f'HOGTarget: nbins={nbins} must be >= 1')
        self.cell_sizes, self.nbins = cell_sizes, nbins

    @property
    def out_channels(self) -> int:
        return 3 * self.nbins

    @torch.no_grad()
    def forward(self, img: torch.Tensor,
                cell_sizes: Optional[Sequence[int]] = None
                ) -> List[torch.Tensor]:
        """(B, 3, H, W) normalised images -> one (B, 3 * nbins, H / c,
        W / c) target per cell size ``c`` (channel-major: the bins of R,
        then G, then B), values in [0, 1], float32, also under autocast
        (computed with autocast disabled: gradients in float64, the
        pooling and normalisation in float32/64).

        Raises:
            ValueError: not (B, 3, H, W) with H, W multiples of the largest
                cell; a cell size this target was not built with.
        """
        cell_sizes = self.cell_sizes if cell_sizes is None else cell_sizes
        if not cell_sizes:
            return []
        if (img.dim() != 4 or img.shape[1] != 3
                or img.shape[-2] % max(cell_sizes)
                or img.shape[-1] % max(cell_sizes)):
            raise ValueError(f'HOGTarget: needs (B, 3, H, W) images with H, W '
                             f'multiples of {max(cell_sizes)}, got '
                             f'{tuple(img.shape)}')
        if any(c not in self.cell_sizes for c in cell_sizes):
            raise ValueError(f'HOGTarget: cell_sizes={tuple(cell_sizes)} are '
                             f'not all among {self.cell_sizes}')
        # histograms at the largest cell that all asked-for cells tile
        # (coarser once the fine-scale decoders are pruned)
        base = reduce(math.gcd, cell_sizes)
        with autocast_off(img.device):
            return self._histograms(img, cell_sizes, base)

    def _histograms(self, img: torch.Tensor, cell_sizes: Sequence[int],
                    base: int) -> List[torch.Tensor]:
        B, _, H, W = img.shape
        # float64: the exact Sobel of the float32 input, so a gradient that
        # is exactly 0 stays 0 and its bin does not depend on rounding.
        # Separable: a difference, then (1, 2, 1) across it.
        p = F.pad(img.float(), (1, 1, 1, 1), mode='reflect').double()
        dx = p[..., :, :-2] - p[..., :, 2:]  # left - right, (B, 3, H + 2, W)
        gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
        dy = p[..., :-2, :] - p[..., 2:, :]  # top - bottom, (B, 3, H, W + 2)
        gy = dy[..., :-2] + 2 * dy[..., 1:-1] + dy[..., 2:]  # (B, 3, H, W)
        del p, dx, dy  # full-size float64 temporaries: keep few alive
        magnitude = torch.hypot(gx, gy)
        # angle from the y-axis, in (-pi, pi] -> bin in [0, nbins)
        bins = torch.atan2(gx, gy).div_(math.pi).mul_(self.nbins).floor_()
        bins = bins.long().remainder_(self.nbins)
        del gx, gy
        # magnitudes summed per (bin, base cell) in one scatter
        h, w = H // base, W // base
        rows = torch.arange(H, device=img.device) // base
        cols = torch.arange(W, device=img.device) // base
        index = bins.mul_(h * w).add_(rows[:, None] * w + cols)  # (B,3,H,W)
        hist = magnitude.new_zeros(B, 3, self.nbins * h * w).scatter_add_(
            2, index.flatten(2), magnitude.flatten(2))
        hist = hist.view(B, 3, self.nbins, h, w)
        targets = []
        for c in cell_sizes:
            h = hist.flatten(1, 2)  # (B, 3 * nbins, H / base, W / base)
            if c != base:
                h = F.avg_pool2d(h, c // base) * (c // base)**2
            h = h.unflatten(1, (3, self.nbins))
            targets.append(F.normalize(h, dim=2).flatten(1, 2).float())
        return targets

"""Multi-scale HOG targets of LocalMIM (Wang et al., CVPR 2023)."""
import math
from functools import reduce
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmum.registry import MODELS


@MODELS.register_module()
class HOGTarget(BaseModule):
    """Histograms of oriented gradients at several cell sizes.

    Per RGB channel: Sobel gradients (reflected border), unsigned
    orientation in [0, pi) split into ``nbins`` bins, magnitudes summed over
    each cell, every histogram (one channel, one cell) L2-normalised. The
    histograms of the smallest cell are computed once and summed into the
    larger cells, so the whole thing is a few tensor ops and poolings (no
    loop over pixels).

    Args:
        cell_sizes (Sequence[int]): Cell sizes in pixels, each a multiple of
            the smallest. Defaults to (4, 8, 16, 32) (56², 28², 14², 7²
            targets for 224² images).
        nbins (int): Orientation bins. Defaults to 9.
    """

    def __init__(self, cell_sizes: Sequence[int] = (4, 8, 16, 32),
                 nbins: int = 9) -> None:
        super().__init__()
        cell_sizes = tuple(cell_sizes)
        if not cell_sizes or any(
                c <= 0 or c % min(cell_sizes) for c in cell_sizes):
            raise ValueError(f'HOGTarget: cell_sizes={cell_sizes} must be '
                             'positive multiples of the smallest one')
        self.cell_sizes, self.nbins = cell_sizes, nbins

    @property
    def out_channels(self) -> int:
        return 3 * self.nbins

    @torch.no_grad()
    def forward(self, img: torch.Tensor,
                cell_sizes: Optional[Sequence[int]] = None
                ) -> List[torch.Tensor]:
        """(B, 3, H, W) images -> one (B, 3 * nbins, H / c, W / c) target per
        cell size ``c`` (channel-major: the 9 bins of R, then G, then B)."""
        cell_sizes = self.cell_sizes if cell_sizes is None else cell_sizes
        if not cell_sizes:
            return []
        B, C, H, W = img.shape
        if C != 3 or H % max(cell_sizes) or W % max(cell_sizes):
            raise ValueError(f'HOGTarget: needs (B, 3, H, W) images with H, W '
                             f'multiples of {max(cell_sizes)}, got '
                             f'{tuple(img.shape)}')
        if any(c not in self.cell_sizes for c in cell_sizes):
            raise ValueError(f'HOGTarget: cell_sizes={tuple(cell_sizes)} are '
                             f'not all among {self.cell_sizes}')
        # histograms at the largest cell that all asked-for cells tile
        # (coarser once the fine-scale decoders are pruned)
        base = reduce(math.gcd, cell_sizes)
        # Sobel, separable: central difference, then [1, 2, 1] smoothing
        # across it (a zero difference, e.g. at a reflected border, stays 0)
        p = F.pad(img.float(), (1, 1, 1, 1), mode='reflect')
        dx = p[..., :, :-2] - p[..., :, 2:]  # (B, 3, H + 2, W)
        gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
        dy = p[..., :-2, :] - p[..., 2:, :]  # (B, 3, H, W + 2)
        gy = dy[..., :-2] + 2 * dy[..., 1:-1] + dy[..., 2:]  # (B, 3, H, W)
        magnitude = torch.hypot(gx, gy)
        # unsigned orientation in [0, pi): turn every gradient into the upper
        # half-plane (horizontal ones to +x) before taking its angle
        flip = (gy < 0) | ((gy == 0) & (gx < 0))
        angle = torch.atan2(torch.where(flip, -gy, gy),
                            torch.where(flip, -gx, gx))
        bins = (angle * (self.nbins / math.pi)).long().clamp_(
            max=self.nbins - 1)
        # (B, 3, nbins, H / base, W / base): magnitudes summed per base cell
        hist = torch.stack([
            F.avg_pool2d(magnitude * (bins == b), base) * base**2
            for b in range(self.nbins)
        ], dim=2)
        targets = []
        for c in cell_sizes:
            h = hist.flatten(1, 2)  # (B, 3 * nbins, H / base, W / base)
            if c != base:
                h = F.avg_pool2d(h, c // base) * (c // base)**2
            h = h.unflatten(1, (3, self.nbins))
            targets.append(F.normalize(h, dim=2).flatten(1, 2))
        return targets

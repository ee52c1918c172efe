import math

import numpy as np
from mmcv.transforms import BaseTransform

from mmum.registry import TRANSFORMS


@TRANSFORMS.register_module()
class UniformMasking(BaseTransform):
    """Uniform Masking of UM-MAE (paper §3.1-3.2, Fig. 4).

    The image is cut into ``patch_size`` patches and the patch grid into
    2x2 cells. *Uniform Sampling* keeps exactly one patch of every cell
    visible and drops the other three (75%). *Secondary Masking* then picks a
    fixed share of the visible patches to be replaced by a learnable mask
    token in the encoder; the count depends only on the image size and
    follows the release (``forward_encoder`` of the UM-MAE Swin / PVT
    models): of ``n`` visible patches (one per cell),
    ``n - int(n * (1 - secondary_ratio))`` get the mask token, i.e. the kept
    count is rounded down. At 256 px: 64 visible, 16 secondary-masked; at
    224 px: 49 visible, ``49 - int(0.75 * 49) = 13`` secondary-masked.

    Added keys (both ``(H/p, W/p)`` uint8 arrays, packed by ``PackInputs``;
    pass ``algorithm_keys=['secondary_mask']`` for the second one):

    - ``mask``: 1 = dropped patch (the reconstruction target), 0 = visible.
    - ``secondary_mask``: 1 = visible patch replaced by the mask token.

    Args:
        patch_size (int): Side of a masking unit in pixels. Defaults to 16.
        secondary_ratio (float): Share of the sampled patches that get the
            mask token, in [0, 1). Defaults to 0.25.
        sampling (str): How each image's cells get the position (one of 4)
            of their visible patch; with ``n`` cells:

            - ``'released'`` (default; paper configs): the official UM-MAE
              sampler (``RandomMaskingGenerator(regular=True)``). A pool
              holds each of the 4 positions ``ceil(n / 2)`` times (``2n``
              entries for even ``n``); it is shuffled and the cells, in
              row-major order, take its first ``n`` entries: a draw without
              replacement. The count of each position per image is
              hypergeometric (population ``4 ceil(n/2)``, ``ceil(n/2)``
              successes, ``n`` draws): mean ``n/4``, std 2.46 at 256 px
              (``n = 64``).
            - ``'iid'``: every cell independently uniform over the 4
              positions; the count of a position per image is
              ``Binomial(n, 1/4)`` (std 3.46 at 256 px).
            - ``'balanced'``: every position exactly ``n // 4`` times, the
              ``n % 4`` remaining cells take distinct positions, in a random
              arrangement (std 0 at 256 px). Not the released behaviour.

            The secondary mask is the same for all three: a uniformly random
            subset of ``n - int(n * (1 - secondary_ratio))`` of the visible
            patches.
    """

    SAMPLINGS = ('released', 'iid', 'balanced')

    def __init__(self,
                 patch_size: int = 16,
                 secondary_ratio: float = 0.25,
                 sampling: str = 'released') -> None:
        if not isinstance(patch_size, int) or patch_size <= 0:
            raise ValueError(
                f'patch_size must be a positive int, got {patch_size!r}')
        if not 0 <= secondary_ratio < 1:
            raise ValueError(
                f'secondary_ratio must be in [0, 1), got {secondary_ratio!r}')
        if sampling not in self.SAMPLINGS:
            raise ValueError(f'sampling must be one of {self.SAMPLINGS}, '
                             f'got {sampling!r}')
        self.patch_size = patch_size
        self.secondary_ratio = secondary_ratio
        self.sampling = sampling

    def grid(self, img_shape) -> tuple:
        """Patch grid ``(h, w)`` for an image of ``img_shape`` (H, W)."""
        H, W = img_shape[:2]
        p, cell = self.patch_size, 2 * self.patch_size
        if H % cell or W % cell:
            raise ValueError(
                f'UniformMasking needs image sides that are multiples of '
                f'2 x patch_size = {cell} px (2x2 cells of {p}-px patches), '
                f'got {H}x{W}. Resize/crop to e.g. {self.suggest(H)}x'
                f'{self.suggest(W)}, a size the UM-MAE encoders accept too.')
        return H // p, W // p

    def suggest(self, side: int) -> int:
        """The side nearest to ``side`` (in ratio) of the form
        ``4 * patch_size * 2**k`` px (64, 128, 256, 512 for 16-px patches).

        UM-MAE's encoders run on the compact half-size image and need more
        than this transform: sides that are multiples of twice their total
        stride (2 x 32 px = 4 x ``patch_size``) whose stage maps tile the
        window; these sizes do so for every power-of-two window (window 8,
        16, ...), so a hint never leads into the encoder's error."""
        base = 4 * self.patch_size
        return base * 2**max(0, round(math.log2(max(side, 1) / base)))

    def num_secondary(self, num_visible: int) -> int:
        """Count of visible patches given the mask token: the release keeps
        ``int(num_visible * (1 - secondary_ratio))`` (rounded down) and masks
        the rest, e.g. 13 of 49 at 224 px, 16 of 64 at 256 px."""
        return num_visible - int(num_visible * (1. - self.secondary_ratio))

    def sample(self, h: int, w: int) -> tuple:
        """Draw ``(mask, secondary_mask)`` for an ``h x w`` patch grid."""
        if h % 2 or w % 2:
            raise ValueError(f'the patch grid must be even to form 2x2 cells,'
                             f' got {h}x{w}')
        ch, cw = h // 2, w // 2
        n = ch * cw
        if self.sampling == 'released':  # n of 4*ceil(n/2), no replacement
            # the release's pool order (0, 1, 2, 3, 0, 1, ...): same draws
            # as its generator under the same numpy seed
            pos = np.random.permutation(np.tile(np.arange(4), -(-n // 2)))
            pos = pos[:n]
        elif self.sampling == 'iid':
            pos = np.random.randint(0, 4, size=n)
        else:  # 'balanced': n // 4 of each position, remainder distinct
            pos = np.concatenate([
                np.repeat(np.arange(4), n // 4),
                np.random.permutation(4)[:n % 4]
            ])
            pos = np.random.permutation(pos)
        # one-hot over the 4 positions of every cell -> (ch, cw, 2, 2)
        visible = np.eye(4, dtype=np.uint8)[pos].reshape(ch, cw, 2, 2)
        visible = visible.transpose(0, 2, 1, 3).reshape(h, w)

        k = self.num_secondary(n)
        if k == n:
            raise ValueError(
                f'secondary_ratio={self.secondary_ratio} gives the mask token'
                f' to all {n} visible patches of a {h}x{w} grid, so the '
                'encoder would see no pixel; lower it (int(n * (1 - ratio)) '
                'must be > 0) or use larger images')
        secondary = np.zeros(n, dtype=np.uint8)
        secondary[np.random.permutation(n)[:k]] = 1
        # cells are ordered row-major, like the visible patches
        secondary_mask = np.zeros((h, w), dtype=np.uint8)
        secondary_mask[visible.astype(bool)] = secondary
        return 1 - visible, secondary_mask

    def transform(self, results: dict) -> dict:
        h, w = self.grid(results['img'].shape)
        results['mask'], results['secondary_mask'] = self.sample(h, w)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(patch_size={self.patch_size}, '
                f'secondary_ratio={self.secondary_ratio}, '
                f"sampling='{self.sampling}')")

"""MAE's ViT encoder with the sampling strategies of UM-MAE's pilot study
(paper §4.1, Fig. 4, Table 1)."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmpretrain.models import MAEViT

from mmum.models.layers import float_drop_rates
from mmum.registry import MODELS


@MODELS.register_module()
class UMViT(MAEViT):
    """Vanilla ViT for MAE with a choice of which 25% of patches it sees.

    - ``'RS'``: random sampling (MAE; ``mask_ratio`` applies);
    - ``'GS'``: grid sampling, the top-left patch of every 2x2 cell;
    - ``'US'``: uniform sampling, one random patch of every 2x2 cell;
    - ``'UM'``: uniform masking, US and then ``secondary_ratio`` of the
      sampled patches replaced by a learnable ``mask_token`` (plus their
      position embedding).

    The encoder drops the unsampled patches as MAE does, so all strategies
    feed it the same number of tokens and the loss is on the same number of
    patches; use it with mmpretrain's ``MAE``, ``MAEPretrainDecoder`` and
    ``MAEPretrainHead``.

    Args:
        sampling (str): One of ``'RS'``, ``'GS'``, ``'US'``, ``'UM'``.
            Defaults to ``'UM'``.
        secondary_ratio (float): Share of sampled patches given the mask
            token, ``'UM'`` only (paper: 0.15, 0.25, 0.35); of ``n`` sampled
            patches ``n - int(n * (1 - secondary_ratio))`` get it, as in
            the release. Defaults to 0.25.
        **kwargs: Arguments of mmpretrain's ``MAEViT``.
    """

    SAMPLINGS = ('RS', 'GS', 'US', 'UM')

    def __init__(self,
                 *args,
                 sampling: str = 'UM',
                 secondary_ratio: float = 0.25,
                 **kwargs) -> None:
        if sampling not in self.SAMPLINGS:
            raise ValueError(f'sampling must be one of {self.SAMPLINGS} '
                             f'(see paper Fig. 4), got {sampling!r}')
        if sampling == 'UM' and not 0 < secondary_ratio < 1:
            raise ValueError(f'secondary_ratio must be in (0, 1) for UM, got '
                             f'{secondary_ratio!r}')
        if sampling == 'RS' and not 0 < kwargs.get('mask_ratio', 0.75) < 1:
            raise ValueError(
                f"mask_ratio must be in (0, 1) for 'RS', got "
                f"{kwargs['mask_ratio']!r}: the loss is taken on the dropped "
                'patches (0 drops none) and the encoder needs sampled ones')
        if sampling != 'RS' and kwargs.get('mask_ratio', 0.75) != 0.75:
            raise ValueError(
                f"sampling {sampling!r} keeps one patch of every 2x2 cell, so "
                f"mask_ratio is 0.75; got {kwargs['mask_ratio']!r}")
        super().__init__(*args, **kwargs)
        float_drop_rates(self)  # no numpy scalars: no graph breaks
        self.sampling = sampling
        self.secondary_ratio = secondary_ratio
        if sampling == 'UM':
            self.mask_token = nn.Parameter(
                torch.zeros(1, 1, self.embed_dims))

    def init_weights(self) -> None:
        super().init_weights()
        if self.sampling == 'UM':
            nn.init.normal_(self.mask_token, std=.02)

    def sample(self, B: int, hw: Tuple[int, int], device
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw the sampled patches of a ``B`` x ``hw`` patch grid.

        Returns ``ids_keep`` (B, n) row-major indices of the sampled patches,
        ``mask`` (B, L) with 1 = dropped, and ``ids_restore`` (B, L) that
        undoes the order ``[ids_keep, dropped]`` (as MAE's decoder expects).
        """
        h, w = hw
        L = h * w
        if self.sampling == 'RS':
            n = int(L * (1 - self.mask_ratio))
            if not 1 <= n < L:
                raise ValueError(
                    f'mask_ratio={self.mask_ratio} keeps {n} of the {L} '
                    f'patches of a {h}x{w} grid; it must keep at least one '
                    'and drop at least one')
            ids_shuffle = torch.rand(B, L, device=device).argsort(1)
        else:
            if h % 2 or w % 2:
                raise ValueError(
                    f'{self.sampling} sampling needs an even patch grid to '
                    f'form 2x2 cells, got {h}x{w}')
            n = L // 4
            if self.sampling == 'GS':
                pos = torch.zeros(B, h // 2, w // 2, device=device).long()
            else:
                pos = torch.randint(0, 4, (B, h // 2, w // 2), device=device)
            rows = torch.arange(0, h, 2, device=device).view(1, -1, 1)
            cols = torch.arange(0, w, 2, device=device).view(1, 1, -1)
            keep = ((rows + pos // 2) * w + cols + pos % 2).flatten(1)
            dropped = torch.ones(B, L, device=device).scatter(1, keep, 0.)
            # sampled patches first (row-major), then the dropped ones
            ids_shuffle = dropped.argsort(dim=1, stable=True)
        ids_restore = ids_shuffle.argsort(1)
        mask = torch.ones(B, L, device=device)
        mask[:, :n] = 0
        return ids_shuffle[:, :n], mask.gather(1, ids_restore), ids_restore

    def forward(self, x: torch.Tensor, mask: Optional[bool] = True):
        """With ``mask`` (default) returns ``(latent, mask, ids_restore)``
        for MAE: latent (B, 1 + n, C) of the class token and the sampled
        patches. With ``mask=None`` a plain ViT forward."""
        if mask is None or mask is False:
            return super().forward(x, None)
        B = x.shape[0]
        x, hw = self.patch_embed(x)  # B, L, C
        if tuple(hw) != tuple(self.patch_resolution):
            raise ValueError(
                f'UMViT was built for a {tuple(self.patch_resolution)} patch '
                f'grid (img_size) but the input gives {tuple(hw)}')
        pos = self.pos_embed[:, 1:].expand(B, -1, -1)
        ids_keep, mask, ids_restore = self.sample(B, hw, x.device)
        index = ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        x = (x + pos).gather(1, index)  # B, n, C
        if self.sampling == 'UM':
            n = ids_keep.shape[1]
            # the release keeps int(n * (1 - ratio)) (models_mae.py)
            k = n - int(n * (1. - self.secondary_ratio))
            if k == n:
                raise ValueError(
                    f'secondary_ratio={self.secondary_ratio} gives the mask '
                    f'token to all {n} sampled patches; the encoder would '
                    'see no pixel (int(n * (1 - ratio)) must be > 0)')
            secondary = torch.zeros(B, n, 1, dtype=torch.bool,
                                    device=x.device)
            secondary[torch.arange(B).view(-1, 1),
                      torch.rand(B, n, device=x.device).argsort(1)[:, :k]] = 1
            token = self.mask_token + pos.gather(1, index)
            x = torch.where(secondary, token.to(x.dtype), x)
        cls_token = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        x = torch.cat([cls_token, x], dim=1)  # B, 1 + n, C
        for layer in self.layers:
            x = layer(x)
        return self.norm1(x), mask, ids_restore

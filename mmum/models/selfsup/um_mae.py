from typing import Dict, List, Tuple

import torch
from mmpretrain.models import BaseSelfSupervisor
from mmpretrain.structures import DataSample

from mmum.registry import MODELS


def visible_index(mask: torch.Tensor) -> torch.Tensor:
    """Full-grid index of the visible patch of every 2x2 cell.

    Args:
        mask (Tensor): (B, h, w) uniform mask, 1 = dropped.
    Returns:
        Tensor: (B, h/2 * w/2) flat index into the h*w grid, cells row-major.
    """
    B, h, w = mask.shape
    cells = (mask == 0).view(B, h // 2, 2, w // 2, 2).permute(0, 1, 3, 2, 4)
    cells = cells.reshape(B, h // 2, w // 2, 4)
    counts = cells.sum(-1)
    # (the check reads the mask on the host; under torch.compile it would
    # break the graph: there the pipeline's masks are trusted)
    if not torch.compiler.is_compiling() and (counts != 1).any():
        bad = counts.ne(1).nonzero()[0].tolist()
        raise ValueError(
            'UM-MAE needs a uniform mask with exactly one visible patch per '
            f'2x2 cell; sample {bad[0]} has {int(counts[tuple(bad)])} in cell '
            f'{tuple(bad[1:])}. Put mmum.UniformMasking in the pipeline.')
    pos = cells.float().argmax(-1)  # B, h/2, w/2 in {0,1,2,3}
    ar = torch.arange(max(h, w) // 2, device=mask.device)
    rows = ar[:h // 2].view(1, -1, 1) * 2 + pos // 2
    cols = ar[:w // 2].view(1, 1, -1) * 2 + pos % 2
    return (rows * w + cols).flatten(1)


def dropped_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, M) flat index of the dropped patches (``mask`` (B, h, w), 1 =
    dropped), M = 3/4 h*w for a uniform mask; sorted by a stable sort, so
    with no host-device sync."""
    B, h, w = mask.shape
    M = h * w - h * w // 4
    order = torch.argsort(mask.flatten(1).to(torch.uint8), dim=1,
                          descending=True, stable=True)
    return order[:, :M]


@MODELS.register_module()
class UMMAE(BaseSelfSupervisor):
    """UM-MAE: MAE pre-training of hierarchical ViTs with Uniform Masking.

    The pipeline's ``mmum.UniformMasking`` leaves one visible ``patch_size``
    patch in every 2x2 cell (``mask``) and marks a share of them for the mask
    token (``secondary_mask``). The visible patches are packed into a compact
    H/2 x W/2 image for the encoder; the decoder reconstructs every patch and
    the loss is taken on the dropped ones (paper §3, Fig. 5).

    Args:
        patch_size (int): Masking unit in pixels. Defaults to 16.
        **kwargs: ``backbone``, ``neck``, ``head``, ``data_preprocessor``,
            ``init_cfg`` as in mmpretrain's ``BaseSelfSupervisor``.
    """

    def __init__(self, patch_size: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def extract_feat(self, inputs: torch.Tensor):
        return self.backbone(inputs, mask=None)

    def compact(self, inputs: torch.Tensor, index: torch.Tensor):
        """Gather the visible patches into the compact image.

        inputs: (B, 3, H, W); index: (B, N) from :func:`visible_index`.
        Returns (B, 3, H/2, W/2).
        """
        B, C, H, W = inputs.shape
        p = self.patch_size
        patches = inputs.view(B, C, H // p, p, W // p, p).permute(
            0, 2, 4, 1, 3, 5).flatten(1, 2)  # B, h*w, C, p, p
        patches = patches.gather(
            1, index.view(B, -1, 1, 1, 1).expand(-1, -1, C, p, p))
        h2, w2 = H // p // 2, W // p // 2
        return patches.view(B, h2, w2, C, p, p).permute(0, 3, 1, 4, 2, 5) \
            .reshape(B, C, H // 2, W // 2)

    def masks(self, inputs: torch.Tensor, data_samples: List[DataSample]
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stack and check the masks: (mask, index, secondary) with secondary
        in compact-unit layout (B, H/2p, W/2p)."""
        B, _, H, W = inputs.shape
        grid = (H // self.patch_size, W // self.patch_size)
        try:
            mask = torch.stack(
                [torch.as_tensor(ds.mask) for ds in data_samples])
            secondary = torch.stack([
                torch.as_tensor(ds.secondary_mask) for ds in data_samples
            ])
        except (AttributeError, KeyError) as e:
            raise KeyError(
                'UM-MAE needs `mask` and `secondary_mask` in every data '
                'sample: add dict(type="mmum.UniformMasking") and '
                'dict(type="PackInputs", algorithm_keys=["secondary_mask"]) '
                'to the pipeline') from e
        if tuple(mask.shape[1:]) != grid or H % (2 * self.patch_size) or \
                W % (2 * self.patch_size):
            raise ValueError(
                f'mask grid {tuple(mask.shape[1:])} does not match the '
                f'{H}x{W} input with {self.patch_size}-px patches (expected '
                f'{grid}, image sides multiples of {2 * self.patch_size})')
        # checked and indexed where the pipeline made them (the CPU), so the
        # check costs no host-device sync; then moved once
        index = visible_index(mask)
        secondary = secondary.flatten(1).gather(1, index.to(secondary.device))
        mask, index, secondary = (t.to(inputs.device, non_blocking=True)
                                  for t in (mask, index, secondary))
        return mask, index, secondary.view(B, grid[0] // 2, grid[1] // 2)

    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        mask, index, secondary = self.masks(inputs, data_samples)
        x = self.compact(inputs, index)  # B, 3, H/2, W/2
        # the encoder gets each visible patch's original place (index)
        latent = self.backbone(x, secondary, index)[-1]  # B, C, H/64, W/64
        # the loss reads the dropped patches only, so only they are predicted
        dropped = dropped_index(mask)  # B, M = 3/4 h*w
        pred = self.neck(latent, index, dropped)  # B, M, p*p*3
        target = self.head.construct_target(inputs)  # B, h*w, p*p*3
        target = target.gather(
            1, dropped.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
        loss = self.head.loss_module(pred, target,
                                     pred.new_ones(dropped.shape))
        return dict(loss=loss)

    @torch.no_grad()
    def reconstruct(self, inputs: torch.Tensor,
                    data_samples: List[DataSample]) -> torch.Tensor:
        """Predicted image (B, 3, H, W) in the normalised input space.

        With ``norm_pix`` every patch is predicted normalised by its own
        mean and std, which are unknown for a dropped patch; as MAE's
        pictures do, they are undone with the statistics of a visible patch,
        here the visible patch of the same 2x2 cell.
        """
        mask, index, secondary = self.masks(inputs, data_samples)
        pred = self.neck(self.backbone(self.compact(inputs, index),
                                       secondary, index)[-1],
                         index)  # B, L, p*p*3
        if self.head.norm_pix:
            target = self.head.patchify(inputs)
            B, h, w = mask.shape
            rows = torch.arange(h, device=mask.device).view(-1, 1) // 2
            cols = torch.arange(w, device=mask.device).view(1, -1) // 2
            cell = (rows * (w // 2) + cols).flatten()  # cell of each patch
            source = index[:, cell].unsqueeze(-1)  # its visible patch
            mean = target.mean(-1, keepdim=True).gather(1, source)
            std = (target.var(-1, keepdim=True) + 1e-6).sqrt().gather(
                1, source)
            pred = pred * std + mean
        return self.head.unpatchify(pred)

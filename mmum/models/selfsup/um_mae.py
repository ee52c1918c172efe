import logging
from typing import Dict, List, Tuple

import torch
from mmengine.logging import print_log
from mmpretrain.models import BaseSelfSupervisor
from mmpretrain.structures import DataSample

from mmum.models.layers import autocast_off
from mmum.registry import MODELS


def visible_index(mask: torch.Tensor) -> torch.Tensor:
    """Full-grid index of the visible patch of every 2x2 cell.

    Checks the mask where it is: free on the host (where
    :class:`mmum.UMMAEDataPreprocessor` calls it), one host-device sync on a
    device.

    Args:
        mask (Tensor): (B, h, w) uniform mask, 1 = dropped; h, w even.
    Returns:
        Tensor: (B, h/2 * w/2) int64 flat index into the h*w grid, cells
        row-major.
    Raises:
        ValueError: a side of the grid is odd, or a 2x2 cell does not have
            exactly one visible patch.
    """
    B, h, w = mask.shape
    if h % 2 or w % 2:
        raise ValueError(
            f'UM-MAE needs a mask grid of 2x2 cells (even sides); got '
            f'{h}x{w}. Put mmum.UniformMasking in the pipeline.')
    cells = (mask == 0).view(B, h // 2, 2, w // 2, 2).permute(0, 1, 3, 2, 4)
    cells = cells.reshape(B, h // 2, w // 2, 4)
    counts = cells.sum(-1)
    if (counts != 1).any():
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

    Under autocast (``AmpOptimWrapper``, ``mmum.CPUAmpOptimWrapper``) the
    encoder and decoder run in fp16 / bf16; the target (per-patch
    normalisation statistics), the loss and its weights stay float32
    (``loss``), the masks are integer / bool.

    Args:
        patch_size (int): Masking unit in pixels. Defaults to 16.
        **kwargs: ``backbone``, ``neck``, ``head``, ``data_preprocessor``,
            ``init_cfg`` as in mmpretrain's ``BaseSelfSupervisor``.
    """

    _warned_sync = False  # masks checked on a device (logged once)

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
        """The batch's masks on ``inputs.device``: ``mask`` (B, h, w), 1 =
        dropped; ``index`` (B, h/2 * w/2) from :func:`visible_index`;
        ``secondary`` (B, h/2, w/2) in compact-unit layout, 1 = mask token.

        With :class:`mmum.UMMAEDataPreprocessor` (the configs') the masks
        were checked on the host and arrive as rows of one device tensor per
        field, with their ``visible_index``: nothing here waits for the
        device. Otherwise the uniform-mask check runs where the mask is: on
        the host (numpy / CPU masks given directly) at no cost, on a device
        with one host-device sync per step (logged once).
        """
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
        if all('visible_index' in ds for ds in data_samples):
            index = torch.stack([ds.visible_index for ds in data_samples])
        else:
            if mask.device.type != 'cpu' and not UMMAE._warned_sync:
                UMMAE._warned_sync = True
                print_log(
                    f'UM-MAE checks the uniform masks on {mask.device}: one '
                    'host-device sync per step. Use data_preprocessor=dict('
                    "type='mmum.UMMAEDataPreprocessor', ...) to check them "
                    'on the host before they move.', logger='current',
                    level=logging.WARNING)
            index = visible_index(mask)
        mask, index, secondary = (t.to(inputs.device, non_blocking=True)
                                  for t in (mask, index, secondary))
        secondary = secondary.flatten(1).gather(1, index)  # B, h/2 * w/2
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
        # float32 under autocast: the per-patch normalised target (mean /
        # variance of p*p*3 pixels), the loss and its mask weights (a
        # half-precision count of masked patches rounds in bf16 above 256)
        with autocast_off(inputs.device):
            target = self.head.construct_target(inputs.float())  # B, h*w, .
            target = target.gather(
                1, dropped.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
            loss = self.head.loss_module(
                pred.float(), target,
                torch.ones(dropped.shape, device=pred.device))
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

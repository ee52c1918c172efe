"""GreenMIM: MAE-style pre-training of a Swin that sees visible tokens only.

Huang et al., "Green Hierarchical Vision Transformer for Masked Image
Modeling", NeurIPS 2022. One random mask of ``mask_unit``-pixel units is drawn
per micro-batch (§3.5, different on every rank); the encoder
(:class:`GreenSwinTransformer`) runs on the visible units, a light MAE decoder
puts each visible token back at its own unit and fills the rest with the mask
token, and the loss is the MSE of per-unit normalised pixels on masked units.
"""
from typing import Dict, List, Optional

import torch
from mmengine.dist import get_dist_info
from mmpretrain.models import BaseSelfSupervisor, MAEPretrainDecoder
from mmpretrain.structures import DataSample

from mmum.models.grid import sincos_positions
from mmum.models.layers import autocast_off, blocks_at
from mmum.registry import MODELS


@MODELS.register_module()
class GreenMIMDecoder(MAEPretrainDecoder):
    """mmpretrain's MAE decoder without a class token, fed by a batch-wise
    mask: ``num_patches`` = number of mask units, ``patch_size`` = mask unit.
    Its ``decoder_pos_embed`` keeps MAE's (unused) class-token slot 0.

    Position table: the fixed 2-D sin-cos table of MAE's and the released
    GreenMIM's code, in which unit (row r, column c) gets
    ``[sin(c w), cos(c w), sin(r w), cos(r w)]`` (``w`` the D/4 frequencies
    ``10000^(-k / (D/4))``): the first half encodes the column. mmpretrain's
    ``build_2d_sincos_position_embedding`` puts the row first, i.e. builds the
    row/column transpose; the paper follows MAE, so we use MAE's table and a
    released checkpoint's table loads unchanged.
    """

    def init_weights(self) -> None:
        """MAE's init; then the position table is transposed to MAE's
        (column first) layout, see the class docstring."""
        super().init_weights()
        side = int(self.num_patches**.5)
        pos = self.decoder_pos_embed.data[0, 1:]  # L, D; row-first layout
        pos = pos.view(side, side, -1).transpose(0, 1)  # column, row, D
        self.decoder_pos_embed.data[0, 1:] = pos.reshape(side * side, -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                masked_only: bool = False) -> torch.Tensor:
        """x: (B, N_vis, C) visible units in row-major order; mask: (h, w)
        bool, True = masked. Returns (B, h*w, patch_size**2 * 3), or with
        ``masked_only`` (B, M, ...) for the masked units in row-major order,
        the only ones the loss reads: the last block then runs just their
        queries (:func:`~mmum.models.layers.block_at`), same values. Any
        (h, w): the sin-cos positions are computed for the mask's grid."""
        grid, mask = tuple(mask.shape), mask.flatten()
        # fixed sin-cos positions, computed for a grid of another image size
        pos = self.decoder_pos_embed[:, 1:] if mask.numel() == \
            self.num_patches and grid[0] == grid[1] else sincos_positions(
                grid, self.decoder_pos_embed.shape[-1])
        B = x.shape[0]
        x = self.decoder_embed(x)  # B, N_vis, D
        visible = (~mask).nonzero().squeeze(1)
        masked = mask.nonzero().squeeze(1)
        # token k of the sequence [visible..., masked...] sits at unit
        # order[k]; argsort(order) puts every token at its own unit
        restore = torch.argsort(torch.cat([visible, masked])).to(x.device)
        x = torch.cat(
            [x, self.mask_token.to(x.dtype).expand(B, len(masked), -1)], 1)
        x = x[:, restore] + pos.to(x)  # B, L, D
        x = blocks_at(self.decoder_blocks, x,
                      masked.to(x.device).expand(B, -1) if masked_only else
                      None)  # B, L or M, D
        return self.decoder_pred(self.decoder_norm(x))  # B, L or M, p*p*3


@MODELS.register_module()
class GreenMIM(BaseSelfSupervisor):
    """GreenMIM algorithm.

    Args:
        backbone (dict): a :class:`GreenSwinTransformer` config.
        neck (dict): a :class:`GreenMIMDecoder` config.
        head (dict): mmpretrain ``MAEPretrainHead`` config whose
            ``patch_size`` is the mask unit (target: per-unit normalised
            pixels; loss on masked units only).
        mask_ratio (float): share of masked units, in (0, 1): the loss is
            taken on masked units, so at least one must be masked.
        mask_unit (int): mask unit in pixels; must equal the encoder's total
            stride (32 for Swin), so every stage sees whole units.

    Under autocast the encoder and decoder run in fp16 / bf16; the mask is
    bool, the target (per-unit normalisation statistics), the loss and its
    weights stay float32 (``loss``).
    """

    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 head: dict,
                 mask_ratio: float = 0.75,
                 mask_unit: int = 32,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        if not 0 < mask_ratio < 1:
            raise ValueError(
                f'GreenMIM: mask_ratio must be in (0, 1), got {mask_ratio!r}:'
                ' the loss is taken on the masked units (0 masks none) and '
                'the encoder needs visible ones (1 keeps none)')
        if isinstance(data_preprocessor, dict) or data_preprocessor is None:
            data_preprocessor = dict(data_preprocessor or {})
            data_preprocessor.setdefault('type',
                                         'mmpretrain.SelfSupDataPreprocessor')
        super().__init__(
            backbone=backbone,
            neck=neck,
            head=head,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        stride = self.backbone.total_stride
        if mask_unit != stride:
            raise ValueError(
                f'mask_unit ({mask_unit}) must equal the encoder total stride '
                f'({stride}): smaller units would leave partly visible '
                'tokens at the last stages (paper §3.5)')
        if self.head.patch_size != mask_unit:
            raise ValueError(f'head.patch_size ({self.head.patch_size}) must '
                             f'equal mask_unit ({mask_unit})')
        self.mask_ratio = mask_ratio
        self.mask_unit = mask_unit

    def random_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """One random mask for the micro-batch: (H/unit, W/unit) bool, True =
        masked, ``int(L * (1 - ratio))`` units kept as in MAE. Each rank takes
        its own row of a (world_size, L) draw, so masks differ across ranks
        even when all ranks share a seed. It stays on the host: the encoder
        plans its groups there and moves only index tensors."""
        H, W = inputs.shape[-2:]
        u = self.mask_unit
        if H % u or W % u:
            fit = getattr(self.backbone, 'suggest_size', lambda n: n)
            raise ValueError(f'image size {H}x{W} must be divisible by the '
                             f'mask unit {u}, e.g. {fit(H)}x{fit(W)}')
        h, w = H // u, W // u
        num_keep = int(h * w * (1 - self.mask_ratio))
        if not 1 <= num_keep < h * w:
            raise ValueError(
                f'GreenMIM: mask_ratio={self.mask_ratio} keeps {num_keep} of '
                f'the {h * w} units of a {h}x{w} grid; it must keep at least '
                'one and mask at least one (use a larger image or a ratio '
                'further from 0 and 1)')
        rank, world_size = get_dist_info()
        noise = torch.rand(world_size, h * w)[rank]
        mask = torch.ones(h * w, dtype=torch.bool)
        mask[noise.argsort()[:num_keep]] = False
        return mask.view(h, w)

    def extract_feat(self, inputs: torch.Tensor):
        return self.backbone(inputs)

    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        mask = self.random_mask(inputs)  # h, w, on the host
        latent = self.backbone(inputs, mask)[-1]  # B, N_vis, C
        pred = self.neck(latent, mask, masked_only=True)  # B, M, u*u*3
        masked = mask.flatten().nonzero().squeeze(1).to(inputs.device)
        # float32 under autocast: the per-unit normalised target, the loss
        # and its weights (a half-precision count of units would round)
        with autocast_off(inputs.device):
            target = self.head.construct_target(inputs.float())[:, masked]
            return dict(loss=self.head.loss_module(  # target: B, M, u*u*3
                pred.float(), target,
                torch.ones(pred.shape[:2], device=pred.device)))


__all__ = ['GreenMIM', 'GreenMIMDecoder']

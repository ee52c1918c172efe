"""GreenMIM: MAE-style pre-training of a Swin that sees visible tokens only.

Huang et al., "Green Hierarchical Vision Transformer for Masked Image
Modeling", NeurIPS 2022. One random mask of ``mask_unit``-pixel units is drawn
per micro-batch (§3.5, different on every rank) on the host, where the whole
step is planned and then moved to the device in one copy; the encoder
(:class:`GreenSwinTransformer`) runs on the visible units, a light MAE decoder
puts each visible token back at its own unit and fills the rest with the mask
token, and the loss is the MSE of per-unit normalised pixels on masked units.
"""
from typing import Dict, List, Optional

import torch
from mmengine.dist import get_dist_info
from mmpretrain.models import (BaseSelfSupervisor, MAEPretrainDecoder,
                               SelfSupDataPreprocessor)
from mmpretrain.structures import DataSample
from torch.utils._pytree import tree_flatten

from mmum.models.grid import sincos_positions
from mmum.models.layers import autocast_off, blocks_at
from mmum.models.layers.group_window_attention import (GroupLayout,
                                                       mark_groups_dynamic)
from mmum.models.layers.host_plan import plan_to_device
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

    def plan(self, mask: torch.Tensor) -> dict:
        """Host plan of the token placement for ``mask`` (h, w) bool on the
        host, True = masked: ``dict(restore=(L,) index that puts the
        sequence [visible..., masked...] at its units, masked=(M,) masked
        units row-major, pos=(1, L, D) sin-cos positions of the mask's grid
        or None for the configured one)."""
        grid, mask = tuple(mask.shape), mask.flatten()
        visible = (~mask).nonzero().squeeze(1)
        masked = mask.nonzero().squeeze(1)
        # token k of the sequence [visible..., masked...] sits at unit
        # order[k]; argsort(order) puts every token at its own unit
        restore = torch.argsort(torch.cat([visible, masked]))
        # fixed sin-cos positions, computed for a grid of another image size
        pos = None if mask.numel() == self.num_patches and \
            grid[0] == grid[1] else sincos_positions(
                grid, self.decoder_pos_embed.shape[-1])
        return dict(restore=restore, masked=masked, pos=pos)

    def forward(self,
                x: torch.Tensor,
                mask: Optional[torch.Tensor] = None,
                masked_only: bool = False,
                plan: Optional[dict] = None) -> torch.Tensor:
        """x: (B, N_vis, C) visible units in row-major order; mask: (h, w)
        bool on the host, True = masked, or instead its :meth:`plan` on x's
        device. Returns (B, h*w, patch_size**2 * 3), or with
        ``masked_only`` (B, M, ...) for the masked units in row-major order,
        the only ones the loss reads: the last block then runs just their
        queries (:func:`~mmum.models.layers.block_at`), same values. Any
        (h, w): the sin-cos positions are computed for the mask's grid."""
        if plan is None:
            plan = plan_to_device(self.plan(mask), x.device)
        masked = plan['masked']
        pos = self.decoder_pos_embed[:, 1:] if plan['pos'] is None else \
            plan['pos']
        B = x.shape[0]
        x = self.decoder_embed(x)  # B, N_vis, D
        x = torch.cat(
            [x, self.mask_token.to(x.dtype).expand(B, len(masked), -1)], 1)
        x = x[:, plan['restore']] + pos.to(x)  # B, L, D
        x = blocks_at(self.decoder_blocks, x,
                      masked.expand(B, -1) if masked_only else None)
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
        data_preprocessor (dict, optional): defaults to
            :class:`GreenMIMDataPreprocessor`, which plans each training
            step on the host (:meth:`plan`) and hands the plan to
            :meth:`loss`; with another preprocessor :meth:`loss` plans at
            its start, the same way.
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
                                         'mmum.GreenMIMDataPreprocessor')
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
        if isinstance(self.data_preprocessor, GreenMIMDataPreprocessor):
            self.data_preprocessor.planner = self.plan

    def random_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """One random mask for the micro-batch: (H/unit, W/unit) bool, True =
        masked, ``int(L * (1 - ratio))`` units kept as in MAE. Each rank takes
        its own row of a (world_size, L) draw, so masks differ across ranks
        even when all ranks share a seed (torch's global generator: seeded
        by ``torch.manual_seed`` / the Runner's ``randomness.seed``). It
        stays on the host, where :meth:`plan` plans the step from it."""
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

    @torch.compiler.disable
    def plan(self, inputs: torch.Tensor) -> dict:
        """Plan one training step on the host and move the plan once.

        Draws the batch-wise mask (:meth:`random_mask`), checks it, plans the
        encoder (per-stage grouping, gather and sparse-convolution indices:
        ``backbone.plan``) and the decoder (``neck.plan``), and moves all of
        it to ``inputs.device`` with one non-blocking copy from page-locked
        memory (:func:`~mmum.models.layers.host_plan.plan_to_device`). Only
        ``inputs.shape`` is read. Host Python, never traced by
        ``torch.compile``; the group dimensions that change with the mask
        are marked dynamic (:func:`mark_groups_dynamic`), so a compiled
        model does not recompile for new masks.

        Returns:
            ``dict(mask=(h, w) bool, True = masked, backbone=...,
            decoder=...)``
            on ``inputs.device``, for :meth:`loss`.
        """
        mask = self.random_mask(inputs)  # h, w on the host
        plan = dict(mask=mask,
                    backbone=self.backbone.plan(mask, inputs.shape[-2:]),
                    decoder=self.neck.plan(mask))
        plan = plan_to_device(plan, inputs.device)
        for layout in tree_flatten(
                plan, is_leaf=lambda x: isinstance(x, GroupLayout))[0]:
            if isinstance(layout, GroupLayout):
                mark_groups_dynamic(layout)  # for torch.compile
        return plan

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor',
                plan: Optional[dict] = None):
        """``BaseSelfSupervisor.forward``; ``mode='loss'`` takes the
        step's ``plan`` from :class:`GreenMIMDataPreprocessor`."""
        if mode == 'loss':
            return self.loss(inputs, data_samples, plan=plan)
        return super().forward(inputs, data_samples, mode)

    def extract_feat(self, inputs: torch.Tensor):
        return self.backbone(inputs)

    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample],
             plan: Optional[dict] = None,
             **kwargs) -> Dict[str, torch.Tensor]:
        """Loss of one step. ``plan``: from :meth:`plan` (the data
        preprocessor's); None plans here, before the first kernel. The
        step then only indexes with the plan's device tensors: no
        host-device synchronisation."""
        if plan is None:
            plan = self.plan(inputs)
        latent = self.backbone(inputs, plan=plan['backbone'])[-1]  # B,N_vis,C
        pred = self.neck(latent, masked_only=True,
                         plan=plan['decoder'])  # B, M, u*u*3
        # float32 under autocast: the per-unit normalised target, the loss
        # and its weights (a half-precision count of units would round)
        with autocast_off(inputs.device):
            target = self.head.construct_target(inputs.float())
            target = target[:, plan['decoder']['masked']]  # B, M, u*u*3
            return dict(loss=self.head.loss_module(
                pred.float(), target,
                torch.ones(pred.shape[:2], device=pred.device)))


@MODELS.register_module()
class GreenMIMDataPreprocessor(SelfSupDataPreprocessor):
    """mmpretrain's ``SelfSupDataPreprocessor`` that also plans the step.

    In training it moves the batch (``non_blocking`` by default: with the
    dataloader's ``pin_memory=True`` the copy does not block the host),
    converts BGR to RGB with a flip (no index tensor to copy), normalises,
    and then, while the device works on that, calls ``planner`` (set by
    :class:`GreenMIM` to its :meth:`GreenMIM.plan`): the mask is drawn and
    every index of the step is planned on the host and crosses to the device
    in one non-blocking copy. Returns ``dict(inputs, data_samples, plan)``;
    ``plan`` is absent outside training.

    Args: as ``SelfSupDataPreprocessor``; ``inputs`` must be one batched
    tensor (``default_collate``), ``non_blocking`` defaults to True.
    """

    def __init__(self, *args, non_blocking: bool = True, **kwargs):
        super().__init__(*args, non_blocking=non_blocking, **kwargs)
        self.planner = None

    @torch.compiler.disable  # host work (batch move, planning): eager
    def forward(self, data: dict, training: bool = False) -> dict:
        inputs, data_samples = self.cast_data(
            [data['inputs'], data.get('data_samples')])
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(
                'GreenMIMDataPreprocessor needs the images as one batched '
                f'tensor (default_collate), got {type(inputs).__name__}')
        if self._channel_conversion:
            inputs = inputs.flip(1)  # B, 3, H, W: BGR <-> RGB
        inputs = inputs.float()
        if self._enable_normalize:
            inputs = (inputs - self.mean) / self.std
        data = dict(inputs=inputs, data_samples=data_samples)
        if training and self.planner is not None:
            data['plan'] = self.planner(inputs)
        return data


__all__ = ['GreenMIM', 'GreenMIMDataPreprocessor', 'GreenMIMDecoder']

"""Twins-SVT that computes on the visible tokens only (GreenMIM, Twins-L).

It *is* mmpretrain's ``SVT`` (same modules and parameter names, so a
checkpoint loads into ``mmpretrain.models.SVT`` with ``strict=True`` and
back); only the forward differs when a mask is given. The mask is shared by
the micro-batch on the grid of the encoder's total stride (32 px, §3.5) and
the encoder sees a sparse map: the visible tokens (B, N, C) and their grid
positions, shared by the batch. Per stage (paper §3.2):

- the patch embedding (a convolution with kernel = stride) is a sparse
  strided convolution over the visible sites, then its LayerNorm;
- locally-grouped self-attention (LSA, non-overlapping windows, no shift and
  no position bias) is group window attention with the optimal grouping:
  a token attends to the visible tokens of its own window;
- global sub-sampled attention (GSA): the queries are the visible tokens, the
  keys / values come from the spatial-reduction convolution (kernel = stride
  = ``sr_ratio``) evaluated sparsely at the cells that hold visible tokens,
  i.e. from the visible units only;
- the position-encoding generator (PEG, a depth-wise 3x3 convolution after
  a stage's first block) is a submanifold convolution whose masked
  neighbours count as zero. Twins / CPVT add its input back
  (``peg_residual=True``, ``SVT``'s); the released GreenMIM Twins returns
  the convolution alone (``peg_residual=False``, docs/green_mim.md).

Every operation equals its dense counterpart on the zero-filled map read at
the visible sites, restricted to visible keys (tests/test_green_twins.py).
Without a mask it returns what ``SVT`` returns.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from torch.utils.checkpoint import checkpoint
from mmpretrain.models import SVT
from mmpretrain.models.backbones.twins import LSAEncoderLayer
from mmpretrain.models.utils import ConditionalPositionEncoding

from mmum.registry import MODELS
from ..layers.group_window_attention import grouped_attention, plan_groups
from ..layers.host_plan import plan_to_device
from ..layers.sparse_conv import (build_neighbour_index, build_strided_index,
                                  sparse_strided_conv, submanifold_dwconv3x3)


def _heads(x: torch.Tensor, nh: int) -> torch.Tensor:
    """(B, L, C) -> (B, nh, L, C/nh)."""
    B, L, C = x.shape
    return x.view(B, L, nh, C // nh).transpose(1, 2)


def grouped_lsa(attn, x: torch.Tensor, plan) -> torch.Tensor:
    """mmpretrain ``LocallyGroupedSelfAttention`` on visible tokens.

    Args:
        attn: the ``LocallyGroupedSelfAttention`` (its ``qkv``, ``proj``).
        x: (B, N, C) visible tokens.
        plan: ``GroupPlan`` of the tokens for unshifted windows.

    Returns:
        (B, N, C): each token attends to the visible tokens of its window.
    """
    out = grouped_attention(attn.qkv(x), plan, attn.num_heads,
                            plan.allowed[:, None],
                            attn.attn_drop.p if attn.training else 0.,
                            attn.scale)  # B, N, C
    return attn.proj_drop(attn.proj(out))


def sparse_gsa(attn, x: torch.Tensor,
               sr_index: Optional[torch.Tensor]) -> torch.Tensor:
    """mmpretrain ``GlobalSubsampledAttention`` on visible tokens.

    Args:
        attn: the ``GlobalSubsampledAttention``.
        x: (B, N, C) visible tokens.
        sr_index: (M, sr**2) index of the spatial-reduction convolution
            (:func:`build_strided_index`), or None when ``sr_ratio == 1``.

    Returns:
        (B, N, C): attention of every visible query over the M sub-sampled
        keys of the cells that hold visible tokens (N keys without
        reduction).
    """
    nh = attn.num_heads
    q = _heads(attn.q(x), nh)  # B, nh, N, C/nh
    if sr_index is not None:
        x = attn.norm(
            sparse_strided_conv(x, sr_index, attn.sr.weight, attn.sr.bias))
    k, v = attn.kv(x).chunk(2, -1)  # B, M, C each
    # GSA has no qk_scale: the default head_dims ** -0.5, and its attn_drop
    # is a probability (mmpretrain's MultiheadAttention)
    out = F.scaled_dot_product_attention(
        q, _heads(k, nh), _heads(v, nh),
        dropout_p=attn.attn_drop if attn.training else 0.)  # B, nh, N, C/nh
    out = attn.proj(out.transpose(1, 2).flatten(2))
    return attn.out_drop(attn.proj_drop(out))


class PEGWithoutResidual(ConditionalPositionEncoding):
    """The released GreenMIM Twins' PEG: the depth-wise 3x3 convolution of
    the tokens, without adding them back (same parameters ``proj.*``)."""

    def forward(self, x, hw_shape):
        B, N, C = x.shape
        x = self.proj(x.transpose(1, 2).reshape(B, C, *hw_shape))
        return x.flatten(2).transpose(1, 2)


def use_released_twins_parts(model: SVT, norm_cfg: Optional[dict],
                             peg_residual: bool) -> None:
    """Give an ``SVT`` (in place) ``norm_cfg`` in its patch-embedding
    norms (``SVT`` hard-codes ``dict(type='LN')`` there) and, with
    ``peg_residual=False``, the released GreenMIM PEG without residual.
    Parameters and their names are unchanged."""
    if not isinstance(peg_residual, bool):
        raise ValueError(
            'peg_residual must be True (Twins / SVT) or False (released '
            f'GreenMIM), got {peg_residual!r}')
    if not peg_residual:
        for i, peg in enumerate(model.position_encodings):
            model.position_encodings[i] = PEGWithoutResidual(
                peg.proj.in_channels, peg.proj.out_channels)
    if norm_cfg is not None:
        for embed in model.patch_embeds:
            dims = embed.norm.normalized_shape[0]
            embed.norm = build_norm_layer(norm_cfg, dims)[1]


@MODELS.register_module()
class GreenTwins(SVT):
    """Visible-only Twins-SVT encoder for GreenMIM.

    Args:
        arch, in_channels, out_indices, qkv_bias, drop_rate, attn_drop_rate,
        drop_path_rate, norm_after_stage, init_cfg: as in mmpretrain's
        ``SVT``. The patch sizes must equal the strides (non-overlapping
        patch embeddings, true for every SVT arch).
        norm_cfg (dict): Every norm: blocks, stage norms and, unlike
            ``SVT`` (which hard-codes ``dict(type='LN')`` there), the patch
            embeddings' norms. Defaults to ``dict(type='LN')``; the
            released GreenMIM Twins-L uses eps 1e-6 everywhere.
        peg_residual (bool): Whether the PEG adds its input back, as Twins /
            CPVT / ``SVT`` do (True, default); False is the released
            GreenMIM Twins (the convolution alone), in both the visible-only
            and the dense forward. The weights are the same either way.
        with_cp (bool): Activation checkpointing of every block on the
            visible-token (pre-training) path: the block is recomputed in
            the backward instead of saving its activations. ``SVT`` has no
            checkpointing, so the dense path (``mask=None``) refuses a
            gradient-tracking forward with it. Defaults to False.
    """

    def __init__(self,
                 arch='large',
                 in_channels=3,
                 out_indices=(3, ),
                 qkv_bias=False,
                 drop_rate=0.,
                 attn_drop_rate=0.,
                 drop_path_rate=0.,
                 norm_cfg=dict(type='LN'),
                 norm_after_stage=False,
                 with_cp=False,
                 peg_residual=True,
                 init_cfg=None):
        super().__init__(arch, in_channels, out_indices, qkv_bias, drop_rate,
                         attn_drop_rate, drop_path_rate, norm_cfg,
                         norm_after_stage, init_cfg)
        self.with_cp = with_cp
        use_released_twins_parts(self, norm_cfg, peg_residual)
        self.peg_residual = peg_residual
        if list(self.patch_sizes) != list(self.strides):
            raise ValueError(f'GreenTwins needs patch_sizes == strides '
                             f'(non-overlapping patch embeddings), got '
                             f'{self.patch_sizes} and {self.strides}')
        # a mask unit covers exactly one token of the last stage
        self.total_stride = math.prod(self.strides)

    def forward(self,
                x: torch.Tensor,
                mask: Optional[torch.Tensor] = None,
                plan: Optional[dict] = None):
        """Args:
            x: images (B, 3, H, W).
            mask: None, or a bool map (H/stride, W/stride) on the host,
                shared by the batch, True = masked unit of ``total_stride``
                pixels; it is planned (:meth:`plan`) and moved here.
            plan: instead of ``mask``, its :meth:`plan` already on x's
                device (GreenMIM plans in its data preprocessor).

        Returns:
            Without mask: SVT's dense maps (B, C_i, H_i, W_i).
            With mask: per ``out_indices`` the visible tokens (B, N_i, C_i)
            after ``norm_after_stage{i}``, row-major over the visible
            positions of stage i; at the last stage token k is the k-th
            visible unit of ``(~mask).flatten()``.

        Raises:
            ValueError: a mask of the wrong dtype / shape or hiding every
            unit, or an image side that is not a multiple of the total
            stride or whose stage maps are not multiples of the windows
            (the message names the nearest size that works).
        """
        if mask is None and plan is None:
            if self.with_cp and torch.is_grad_enabled() and any(
                    p.requires_grad for p in self.parameters()):
                raise ValueError(
                    'GreenTwins(with_cp=True) checkpoints the visible-token '
                    'path only; the dense forward (mask=None) is '
                    "mmpretrain's SVT forward, without checkpointing. Run it"
                    ' under torch.no_grad() or build with with_cp=False.')
            return super().forward(x)
        if mask is not None and plan is not None:
            raise ValueError('give the mask or its plan, not both')
        if plan is None:
            plan = plan_to_device(self.plan(mask, x.shape[-2:]), x.device)
        # the image as a sparse map of its visible pixels
        x = x.flatten(2)[:, :, plan['pixels']].transpose(1, 2)  # B, N_px, 3
        outs = []
        for i in range(self.num_stage):
            x = self._stage(i, x, plan['stages'][i])
            x = getattr(self, f'norm_after_stage{i}')(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def plan(self, mask: torch.Tensor, size) -> dict:
        """Everything the visible-token forward needs from ``mask``,
        computed on the host (it reads the mask: run it before the step and
        move it once with
        :func:`~mmum.models.layers.host_plan.plan_to_device`).

        Args:
            mask: (H/stride, W/stride) bool on the host, True = masked.
            size: image size (H, W) in pixels.

        Returns:
            ``dict(pixels=(N_px,) flat indices of the visible pixels,
            stages=[dict(embed=(N', k*k) patch-embedding index,
            groups=GroupLayout of the LSA windows, sr=(M, sr**2)
            spatial-reduction index or None, neighbours=(N', 9) PEG index),
            ...])``, all row-major over the visible sites.

        Raises:
            ValueError: see :meth:`forward`.
        """
        keep = self._check_mask(size, mask)
        H, W = size
        f = self.total_stride
        coords = keep.repeat_interleave(f, 0).repeat_interleave(f, 1).nonzero()
        pixels = coords[:, 0] * W + coords[:, 1]
        hw = (H, W)
        stages = []
        for i in range(self.num_stage):
            embed, coords, hw = build_strided_index(coords, hw,
                                                    self.strides[i])
            sr = self.sr_ratios[i]
            stages.append(
                dict(
                    embed=embed,
                    groups=plan_groups(coords, self.window_sizes[i], 0,
                                       self.embed_dims[i]),
                    sr=None if sr == 1 else build_strided_index(
                        coords, hw, sr)[0],
                    neighbours=build_neighbour_index(coords, hw)))
        return dict(pixels=pixels, stages=stages)

    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """Layer-wise lr decay depth (``SVT`` has none): the first patch
        embedding 0; block j of stage i ``sum(depths[:i]) + j + 1``, the
        stage's patch embedding and PEG going with its first block; the
        stage norms and anything outside the backbone last.

        Returns:
            ``(layer_id, num_layers)`` with ``num_layers = sum(depths) + 2``.
        """
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        parts = param_name[len(prefix):].split('.')
        if parts[0] in ('patch_embeds', 'position_encodings', 'stages'):
            i = int(parts[1])
            j = int(parts[2]) if parts[0] == 'stages' else 0
            if parts[0] == 'patch_embeds' and i == 0:
                return 0, num_layers
            return sum(self.depths[:i]) + j + 1, num_layers
        return num_layers - 1, num_layers

    def _check_mask(self, size, mask):
        H, W = size
        s = self.total_stride
        def hint():  # built only for an error: the search takes ms
            return f'e.g. {self.suggest_size(H)}x{self.suggest_size(W)}'

        if H % s or W % s:
            raise ValueError(
                f'image size {H}x{W} must be divisible by the mask unit = '
                f'encoder total stride {s} ({hint()})')
        if mask.dtype != torch.bool or mask.shape != (H // s, W // s):
            raise ValueError(
                f'mask must be a bool tensor of shape {(H // s, W // s)} '
                f'(one entry per {s}x{s} unit), got {mask.dtype} '
                f'{tuple(mask.shape)}')
        if bool(mask.all()):
            raise ValueError('mask hides every unit; keep at least one')
        stride = 1
        for i, ws in enumerate(self.window_sizes):
            stride *= self.strides[i]
            side = (H // stride, W // stride)
            if side[0] % ws or side[1] % ws:
                raise ValueError(
                    f'stage {i} map {side[0]}x{side[1]} (image {H}x{W}) is '
                    f'not a multiple of window size {ws}; SVT would pad it '
                    'with tokens that are not part of the image. Use an '
                    'image size whose stage maps are multiples of the '
                    f'windows, {hint()}.')
        return ~mask

    def fits(self, side: int) -> bool:
        """Whether an image side passes :meth:`_check_mask`: a multiple of
        the total stride whose every stage map is a multiple of its
        window."""
        stride, ok = 1, side > 0 and side % self.total_stride == 0
        for s, ws in zip(self.strides, self.window_sizes):
            stride *= s
            ok = ok and (side // stride) % ws == 0
        return ok

    def suggest_size(self, side: int) -> int:
        """The image side nearest to ``side`` that :meth:`fits` (224 for
        250 with the 7x7 windows of every SVT arch)."""
        s = self.total_stride
        top = (max(side, s) // s + 1) * max(self.window_sizes) * 2
        return min((m * s for m in range(1, top + 1) if self.fits(m * s)),
                   key=lambda n: (abs(n - side), n))

    def _stage(self, i, x, plan):
        """Stage ``i`` on the sparse map x (B, N, C_in) with its ``plan``
        (:meth:`plan`, on x's device). Returns its tokens (B, N', C_i)."""
        embed = self.patch_embeds[i]
        x = sparse_strided_conv(x, plan['embed'], embed.projection.weight,
                                embed.projection.bias)  # B, N', C_i
        x = self.position_encoding_drops[i](embed.norm(x))
        plan_lsa = plan['groups'].expand(None)  # no position bias in LSA
        sr_index, neighbours = plan['sr'], plan['neighbours']

        def block(blk, x):  # (B, N, C) -> (B, N, C)
            if isinstance(blk, LSAEncoderLayer):
                y = grouped_lsa(blk.attn, blk.norm1(x), plan_lsa)
            else:
                y = sparse_gsa(blk.attn, blk.norm1(x), sr_index)
            x = x + blk.drop_path(y)
            return x + blk.drop_path(blk.ffn(blk.norm2(x)))

        for j, blk in enumerate(self.stages[i]):
            if self.with_cp and torch.is_grad_enabled():
                x = checkpoint(block, blk, x, use_reentrant=False)
            else:
                x = block(blk, x)
            if j == 0:  # PEG: depth-wise 3x3 conv of the sparse map (+ x)
                peg = self.position_encodings[i].proj
                y = submanifold_dwconv3x3(x, neighbours, peg.weight, peg.bias)
                x = x + y if self.peg_residual else y
        return x


__all__ = ['GreenTwins', 'PEGWithoutResidual', 'use_released_twins_parts',
           'grouped_lsa', 'sparse_gsa']

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model.weight_init import trunc_normal_

from mmum.models.layers import init_as_released
from mmum.models.layers.um_positions import original_positions
from mmum.registry import MODELS
from .cpb_swin import CPBSwinTransformer
from .pvt import replace_with_mask_token


@MODELS.register_module()
class UMSwinTransformer(CPBSwinTransformer):
    """Swin encoder of UM-MAE: runs on the compact H/2 x W/2 input.

    The compact input holds the one visible ``unit``-px patch of every 2x2
    cell (paper Fig. 1d). Secondary-masked units are replaced by a learnable
    ``mask_token`` between the patch embedding's projection and its
    LayerNorm, so the token is learned before the norm, as in the released
    model (which normalises its ``vis_mask_token`` with the patch-embed
    norm). Windows are clamped (not padded) where a stage's map is smaller
    than the window.

    With ``positions='original'`` (default) the relative-position bias of
    each (query, key) pair comes from the two tokens' offset in the
    original image, per sample and per stage (positions in tokens of the
    stage, halved at each patch merging), as in the original-size pipeline
    of paper Fig. 3 and the released model; the forward then needs the
    visible patches' original ``index``. Stages 1-3 then equal that
    pipeline token for token; the last patch merging joins units of four
    cells (no full-size counterpart), whose token takes its top-left unit's
    position (in half tokens, as released). ``'compact'`` takes offsets on the
    compact grid (an ablation: the encoder cannot tell where a patch sits in
    its cell). The fine-tuning :class:`CPBSwinTransformer` is the same either
    way (on a dense grid both agree).

    Takes every ``SwinTransformer`` argument. On the masked path
    ``out_after_downsample`` and ``with_cp`` are honoured;
    ``use_abs_pos_embed=True`` and ``pad_small_map=True`` (where a stage map
    is not larger than the window) apply to the dense path only and make a
    masked forward raise a ``ValueError`` saying why.

    Args:
        unit (int): Size of a masking unit (16-px patch) in pixels.
            Defaults to 16.
        positions (str): ``'original'`` or ``'compact'``. Defaults to
            ``'original'``.
        **kwargs: Arguments of :class:`CPBSwinTransformer`.
    """

    def __init__(self, *args, unit: int = 16, positions: str = 'original',
                 **kwargs) -> None:
        if positions not in ('original', 'compact'):
            raise ValueError(f"positions must be 'original' or 'compact', "
                             f'got {positions!r}')
        kwargs.setdefault('pad_small_map', False)
        super().__init__(*args, **kwargs)
        self.unit = unit
        self.positions = positions
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))

    def init_weights(self) -> None:
        """As the release: mask token ``N(0, 0.02)``, Xavier-uniform
        linears and patch embedding (:func:`init_as_released`)."""
        super().init_weights()
        if isinstance(self.init_cfg, dict) and \
                self.init_cfg.get('type') == 'Pretrained':
            return
        trunc_normal_(self.mask_token, std=.02)
        init_as_released(self, self.patch_embed.projection)

    def check_compact_input(self, hw: Sequence[int]) -> None:
        """Check paper §3.1: the compact pipeline equals the sparse
        full-size one only if every (shifted) window covers whole units.

        A unit of the compact input is one 2x2 cell of the full image. At a
        stage of token stride ``r`` with (clamped) window ``w``, a window spans
        ``w*r`` px and a shifted window is offset by ``(w//2)*r`` px; both
        must be multiples of ``unit``, and the window must tile the map.
        """
        H, W = hw
        if self.use_abs_pos_embed:
            raise ValueError(
                'UM-MAE Swin: use_abs_pos_embed=True applies to the dense '
                'path (mask=None) only: the masked path sees the compact '
                'H/2 x W/2 input, whose token positions are not the '
                "image's, so an absolute table would be read at the wrong "
                'places (UM-MAE uses the relative bias only). Build the '
                'pre-training encoder with use_abs_pos_embed=False.')
        stride = self.patch_embed.projection.stride[0] * 2**(
            len(self.stages) - 1)
        if H % stride or W % stride:
            raise ValueError(
                f'UM-MAE Swin: the compact input {H}x{W} (half the image) '
                f'must be a multiple of the encoder stride {stride}, i.e. the'
                f' image side a multiple of {2 * stride} px (e.g. 256).')
        for i, stage in enumerate(self.stages):
            r = self.patch_embed.projection.stride[0] * 2**i
            size = min(H, W) // r
            window = stage.blocks[0].attn.window_size
            if stage.blocks[0].attn.pad_small_map and size <= window:
                raise ValueError(
                    f'UM-MAE Swin: pad_small_map=True applies to the dense '
                    f'path (mask=None) only: stage {i} of the compact input '
                    f'{H}x{W} has {size} tokens a side, not more than the '
                    f'window {window}, and padding it (instead of clamping '
                    'the window) breaks the compact-input equivalence '
                    '(paper §3.1). Build the pre-training encoder with '
                    'pad_small_map=False (the default).')
            win = min(window, size)
            shifted = any(b.attn.shift_size for b in stage.blocks) and \
                win < size
            bad = (win * r) % self.unit or (H // r) % win or (W // r) % win \
                or (shifted and (win // 2 * r) % self.unit)
            if bad:
                raise ValueError(
                    f'UM-MAE Swin: window_size={window} breaks the '
                    f'compact-input equivalence (paper §3.1) at stage {i} '
                    f'(map {H // r}x{W // r}, token stride {r} px, window '
                    f'{win}): each window ({win * r} px) and its shift '
                    f'({win // 2 * r} px) must cover whole {self.unit}-px '
                    'units and the window must tile the map. Use a window '
                    'of 16*2^n px on the compact input, e.g. window_size=8 '
                    'at 256 px.')

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> tuple:
        """Patch embedding of the compact input ``x`` (B, 3, H/2, W/2) with
        the units of ``mask`` (B, H/2u, W/2u), 1 = masked, replaced by
        ``mask_token`` before the embedding's LayerNorm (the release's
        parametrisation). Returns tokens (B, h*w, C) and (h, w)."""
        pe = self.patch_embed
        if pe.adaptive_padding is not None:
            x = pe.adaptive_padding(x)
        x = pe.projection(x)  # B, C, h, w
        hw_shape = (x.shape[2], x.shape[3])
        x = replace_with_mask_token(x.flatten(2).transpose(1, 2), hw_shape,
                                    mask, self.mask_token)
        if pe.norm is not None:
            x = pe.norm(x)
        return self.drop_after_pos(x), hw_shape

    def stage_positions(self, index: Optional[torch.Tensor], stage: int,
                        hw_shape: Sequence[int]):
        """``(pos, k)`` of :func:`original_positions` for the tokens of
        ``stage`` (``positions='original'``), else ``(None, 1)``."""
        if self.positions == 'compact':
            return None, 1
        stride = self.patch_embed.projection.stride[0] * 2**stage
        return original_positions(index, hw_shape, stride, self.unit)

    @staticmethod
    def forward_block(block, x: torch.Tensor, hw_shape, pos=None,
                      k: int = 1) -> torch.Tensor:
        """mmpretrain's ``SwinBlock.forward`` with the tokens' positions
        ``pos`` (B, h, w, 2) passed to the attention."""

        def inner(x):
            x = x + block.attn(block.norm1(x), hw_shape, pos, k)
            return block.ffn(block.norm2(x), identity=x)

        if block.with_cp and x.requires_grad:
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                index: Optional[torch.Tensor] = None) -> tuple:
        """x: compact input (B, 3, H/2, W/2); mask: (B, H/2u, W/2u), 1 =
        unit replaced by the mask token; index: (B, H/2u * W/2u) original
        unit of each compact unit (``visible_index``; needed with
        ``positions='original'``). Without ``mask`` this is a plain
        :class:`CPBSwinTransformer` (e.g. for feature extraction)."""
        if mask is None:
            return super().forward(x)
        self.check_compact_input(x.shape[-2:])
        if self.positions == 'original' and index is None:
            raise ValueError(
                "UMSwinTransformer(positions='original') needs the visible "
                "patches' original `index` (visible_index of the uniform "
                "mask); pass it, or use positions='compact'")
        x, hw_shape = self.embed(x, mask)  # B, L, C with L = h*w tokens

        outs = []
        for i, stage in enumerate(self.stages):
            pos, k = self.stage_positions(index, i, hw_shape)
            for block in stage.blocks:
                x = self.forward_block(block, x, hw_shape, pos, k)
            merge = stage.downsample is not None
            if merge and self.out_after_downsample:
                x, hw_shape = stage.downsample(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(
                    out.view(-1, *hw_shape, self.num_features[i]).permute(
                        0, 3, 1, 2).contiguous())  # B, C_i, h_i, w_i
            if merge and not self.out_after_downsample:
                x, hw_shape = stage.downsample(x, hw_shape)
        return tuple(outs)

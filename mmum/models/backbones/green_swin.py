"""Swin Transformer that computes on the visible tokens only (GreenMIM).

It *is* mmpretrain's ``SwinTransformer`` (same modules, same parameter names,
so a checkpoint loads into ``mmpretrain.models.SwinTransformer`` with
``strict=True`` and back); only the forward differs when a mask is given:

- the mask is shared by the micro-batch and given on the grid of the
  encoder's total stride (32 px for Swin), so at every stage a 2x2 merge cell
  is either fully visible or fully masked;
- window attention runs as Group Window Attention over the visible tokens;
- patch merging concatenates each visible cell's 2x2 neighbours in the order
  of mmcv's ``PatchMerging`` (``nn.Unfold``: channel-major, then (0,0),
  (0,1), (1,0), (1,1)), so the ``reduction`` weights transfer.

Without a mask it returns what ``SwinTransformer`` returns.
"""
import copy
from typing import Optional, Sequence

import torch
import torch.utils.checkpoint as cp
from mmpretrain.models import SwinTransformer
from mmpretrain.models.utils import resize_pos_embed

from mmum.registry import MODELS
from ..layers.group_window_attention import GroupWindowAttention, plan_groups
from ..layers.host_plan import plan_to_device


@MODELS.register_module()
class GreenSwinTransformer(SwinTransformer):
    """Visible-only Swin encoder for GreenMIM.

    Takes every argument of mmpretrain's ``SwinTransformer`` with the same
    defaults (``arch='tiny'``, ``drop_path_rate=0.1``; the GreenMIM configs
    set their own). Without a mask all of them act as in ``SwinTransformer``
    (it *is* one). On the visible-token path (``mask`` given):

    - honoured: ``arch``, ``img_size``, ``patch_size``, ``in_channels``,
      ``window_size``, ``drop_rate``, ``drop_path_rate``, ``out_indices``,
      ``out_after_downsample``, ``use_abs_pos_embed`` with
      ``interpolate_mode`` (the table is added before the masked tokens are
      dropped), ``with_cp`` (each block recomputed in the backward),
      ``frozen_stages``, ``norm_eval``, ``norm_cfg``, ``patch_cfg``,
      ``stage_cfgs`` (block and merge norms, FFN settings, ...), ``init_cfg``;
    - dense path only, refused by a masked forward with a ``ValueError``
      where they would change the result: ``pad_small_map=True`` when a
      stage map is not larger than its window (padding adds tokens that are
      not part of the image, which the visible tokens never see), per-stage
      window sizes differing from ``window_size`` (the mask-size checks and
      the grouping assume one window), and a ``stage_cfgs.downsample_cfg``
      whose merge is not 2x2 with stride 2 (visible cells are merged 2x2);
    - ``stage_cfgs`` may not replace the window attention (``attn_cfgs``
      ``window_msa``): the visible path needs :class:`GroupWindowAttention`.

    Args:
        norm_cfg (dict): the default of every LayerNorm of the encoder: patch
            embedding, blocks, patch merging and output norms, unless
            ``patch_cfg`` / ``stage_cfgs`` set their own (mmpretrain's
            ``norm_cfg`` covers only the output norms; with the default LN
            both agree). The released GreenMIM uses
            ``dict(type='LN', eps=1e-6)``; a fine-tuning ``SwinTransformer``
            then needs that eps in ``patch_cfg``, ``stage_cfgs.block_cfgs``,
            ``stage_cfgs.downsample_cfg`` and ``norm_cfg`` to compute what
            was trained.
        **others: as in mmpretrain's ``SwinTransformer``.
    """

    def __init__(self,
                 arch='tiny',
                 img_size=224,
                 patch_size=4,
                 in_channels=3,
                 window_size=7,
                 drop_rate=0.,
                 drop_path_rate=0.1,
                 out_indices=(3, ),
                 out_after_downsample=False,
                 use_abs_pos_embed=False,
                 interpolate_mode='bicubic',
                 with_cp=False,
                 frozen_stages=-1,
                 norm_eval=False,
                 pad_small_map=False,
                 norm_cfg=dict(type='LN'),
                 stage_cfgs=dict(),
                 patch_cfg=dict(),
                 init_cfg=None):
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=patch_size,
            in_channels=in_channels,
            window_size=window_size,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            out_indices=out_indices,
            out_after_downsample=out_after_downsample,
            use_abs_pos_embed=use_abs_pos_embed,
            interpolate_mode=interpolate_mode,
            with_cp=with_cp,
            frozen_stages=frozen_stages,
            norm_eval=norm_eval,
            pad_small_map=pad_small_map,
            norm_cfg=norm_cfg,
            stage_cfgs=self._group_stage_cfgs(stage_cfgs, arch, norm_cfg),
            patch_cfg=dict(dict(norm_cfg=norm_cfg), **patch_cfg),
            init_cfg=init_cfg)
        self.window_size = window_size
        self.pad_small_map = pad_small_map
        # a mask unit covers exactly one token of the last stage
        self.total_stride = patch_size * 2**(self.num_layers - 1)
        self._freeze_stages()  # at build, before DDP (see CPBSwinTransformer)

    def _group_stage_cfgs(self, stage_cfgs, arch, norm_cfg):
        """``stage_cfgs`` as one dict per stage (and one block cfg per
        block), each block with :class:`GroupWindowAttention` and
        ``norm_cfg`` as the default norm of the blocks and merges."""
        depths = (self.arch_zoo[arch.lower()] if isinstance(arch, str) and
                  arch.lower() in self.arch_zoo else arch)
        depths = depths['depths'] if isinstance(depths, dict) and \
            'depths' in depths else [0] * 4  # the parent reports the arch
        stages = stage_cfgs if isinstance(stage_cfgs, Sequence) else \
            [stage_cfgs] * len(depths)
        out = []
        for i, stage in enumerate(stages):
            stage = copy.deepcopy(dict(stage))
            blocks = stage.get('block_cfgs', dict())
            if not isinstance(blocks, Sequence):
                blocks = [blocks] * depths[i]
            stage['block_cfgs'] = []
            for block in blocks:
                block = copy.deepcopy(dict(block))
                attn = dict(block.get('attn_cfgs', dict()))
                if attn.get('window_msa', GroupWindowAttention) is not \
                        GroupWindowAttention:
                    raise ValueError(
                        'GreenSwinTransformer computes window attention with '
                        'GroupWindowAttention on the visible tokens; '
                        'stage_cfgs may not replace it (attn_cfgs.window_msa'
                        f'={attn["window_msa"]!r})')
                block['attn_cfgs'] = dict(attn,
                                          window_msa=GroupWindowAttention)
                block.setdefault('norm_cfg', norm_cfg)
                stage['block_cfgs'].append(block)
            stage['downsample_cfg'] = dict(
                dict(norm_cfg=norm_cfg), **stage.get('downsample_cfg', {}))
            out.append(stage)
        return out

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
            Without mask: SwinTransformer's dense maps (B, C_i, H_i, W_i).
            With mask: per ``out_indices`` the normalised visible tokens
            (B, N_i, C_i), row-major over the visible positions of stage i;
            at the last stage token k is the k-th visible unit of
            ``(~mask).flatten()``.
        """
        if mask is None and plan is None:
            return super().forward(x)
        if mask is not None and plan is not None:
            raise ValueError('give the mask or its plan, not both')
        if plan is None:
            plan = plan_to_device(self.plan(mask, x.shape[-2:]), x.device)
        x, hw = self.patch_embed(x)  # B, H0*W0, C
        if self.use_abs_pos_embed:
            x = x + resize_pos_embed(self.absolute_pos_embed,
                                     self.patch_resolution, hw,
                                     self.interpolate_mode, 0)
        x = x[:, plan['tokens']]  # B, N, C: the visible tokens
        x = self.drop_after_pos(x)

        outs = []
        for i, stage in enumerate(self.stages):
            step = plan['stages'][i]
            x = self._stage(stage, x, step['groups'], hw)
            if stage.downsample is not None and self.out_after_downsample:
                x, hw = self._merge_tokens(stage.downsample, x,
                                           step['merge']), _half(hw)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
            if stage.downsample is not None and not self.out_after_downsample:
                x, hw = self._merge_tokens(stage.downsample, x,
                                           step['merge']), _half(hw)
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
            ``dict(tokens=(N0,) patch indices of the visible tokens, row-major,
            stages=[dict(groups={shift: GroupLayout}, merge=(N/4, 4) child
            tokens of every visible 2x2 cell or None), ...])``.

        Raises:
            ValueError: a bad mask or image size, or a setting of the dense
            path only (see the class docstring).
        """
        keep = self._check_mask(size, mask)
        self._check_visible_path(size)
        p = self.patch_embed.projection.stride[0]
        hw = (size[0] // p, size[1] // p)
        f = 2**(self.num_layers - 1)
        keep = keep.repeat_interleave(f, 0).repeat_interleave(f, 1)
        coords = keep.nonzero()  # N, 2 (row, col), row-major
        tokens = coords[:, 0] * hw[1] + coords[:, 1]  # N
        stages = []
        for stage in self.stages:
            groups = {}  # one grouping per shift, shared by the blocks
            for block in stage.blocks:
                attn = block.attn
                shift = attn.shift_size if min(hw) > attn.window_size else 0
                if shift not in groups:
                    groups[shift] = plan_groups(coords, attn.window_size,
                                                shift,
                                                attn.w_msa.embed_dims)
            merge = None
            if stage.downsample is not None:
                merge, coords, hw = self._merge_index(coords, hw)
            stages.append(dict(groups=groups, merge=merge))
        return dict(tokens=tokens, stages=stages)

    def _check_visible_path(self, size):
        """Refuse the settings that only mean something on the dense path
        (see the class docstring), naming the setting and why."""
        H, W = size
        for i, stage in enumerate(self.stages):
            side = min(H, W) // (self.patch_embed.projection.stride[0] * 2**i)
            windows = {b.attn.window_size for b in stage.blocks}
            if windows != {self.window_size}:
                raise ValueError(
                    f'stage {i} has window size(s) {sorted(windows)} from '
                    f'stage_cfgs, not window_size={self.window_size}: '
                    'per-stage windows work on the dense path (mask=None) '
                    'only; the visible-token path groups every stage with '
                    'window_size')
            if self.pad_small_map and side <= self.window_size:
                raise ValueError(
                    f'pad_small_map=True: stage {i} ({side} tokens a side, '
                    f'image {H}x{W}) is not larger than the window '
                    f'{self.window_size}, so Swin would pad it with tokens '
                    'that are not part of the image (and keep shifting); the'
                    ' visible-token path has no such tokens. pad_small_map '
                    'applies to the dense path (mask=None) only: build the '
                    'pre-training encoder with pad_small_map=False.')
            ds = stage.downsample
            if ds is not None and (tuple(ds.sampler.kernel_size) != (2, 2)
                                   or tuple(ds.sampler.stride) != (2, 2)):
                raise ValueError(
                    f'stage {i} merges {tuple(ds.sampler.kernel_size)} '
                    f'patches with stride {tuple(ds.sampler.stride)} '
                    '(stage_cfgs.downsample_cfg); the visible-token path '
                    'merges visible 2x2 cells, so it needs kernel 2, stride '
                    '2 (other merges work on the dense path, mask=None)')

    def _check_mask(self, size, mask):
        H, W = size
        s = self.total_stride
        if H % s or W % s:
            raise ValueError(f'image size {H}x{W} must be divisible by the '
                             f'mask unit = encoder total stride {s} (e.g. '
                             f'{self.suggest_size(H)}x{self.suggest_size(W)})')
        if mask.dtype != torch.bool or mask.shape != (H // s, W // s):
            raise ValueError(
                f'mask must be a bool tensor of shape {(H // s, W // s)} '
                f'(one entry per {s}x{s} unit), got {mask.dtype} '
                f'{tuple(mask.shape)}')
        if bool(mask.all()):
            raise ValueError('mask hides every unit; keep at least one')
        for i in range(self.num_layers):
            side = (H // s * 2**(self.num_layers - 1 - i),
                    W // s * 2**(self.num_layers - 1 - i))
            if any(n > self.window_size and n % self.window_size
                   for n in side):
                raise ValueError(
                    f'stage {i} map {side[0]}x{side[1]} (image {H}x{W}) is '
                    f'neither a multiple of window_size {self.window_size} '
                    'nor covered by one window; Swin would pad it with '
                    'tokens that are not part of the image. Use an image '
                    'size whose stage maps are multiples of the window, '
                    f'e.g. {self.suggest_size(H)}x{self.suggest_size(W)}.')
        return ~mask

    def fits(self, side: int) -> bool:
        """Whether an image side passes :meth:`_check_mask`: a multiple of
        the total stride whose every stage map is a multiple of the window
        or covered by one window."""
        s, w = self.total_stride, self.window_size
        return side > 0 and side % s == 0 and all(
            n <= w or n % w == 0
            for n in (side // s * 2**i for i in range(self.num_layers)))

    def suggest_size(self, side: int) -> int:
        """The image side nearest to ``side`` that :meth:`fits` (224 for
        250 with window 7)."""
        s = self.total_stride
        return min((m * s for m in range(1, 2 * max(side, s) // s + 2 +
                                         self.window_size)
                    if self.fits(m * s)), key=lambda n: (abs(n - side), n))

    def _stage(self, stage, x, groups, hw):
        """Swin blocks of one stage on the visible tokens (B, N, C); the
        ``groups`` layouts ({shift: GroupLayout} on x's device) are expanded
        once and shared by the blocks of equal shift."""
        ws = stage.blocks[0].attn.window_size
        plans = {shift: layout.expand(ws) for shift, layout in groups.items()}
        for block in stage.blocks:
            attn = block.attn
            shift = attn.shift_size if min(hw) > attn.window_size else 0
            x = self._block(block, x, plans[shift])
        return x

    @staticmethod
    def _block(block, x, plan):
        """One Swin block on the visible tokens (B, N, C) -> (B, N, C),
        recomputed in the backward with ``with_cp``."""

        def inner(x):
            attn = block.attn
            x = x + attn.drop(attn.w_msa(block.norm1(x), plan=plan))
            return block.ffn(block.norm2(x), identity=x)

        if block.with_cp and torch.is_grad_enabled():
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)

    @staticmethod
    def _merge_index(coords, hw):
        """Plan of the patch merging of the visible 2x2 cells at ``coords``
        (N, 2, row-major, on the host) of the ``hw`` map: (N/4, 4) token
        index of every cell's children in nn.Unfold's kernel order, the
        cells' coords (N/4, 2) and the merged map size."""
        H, W = hw
        lut = coords.new_full((H * W, ), -1)  # grid position -> token
        lut[coords[:, 0] * W + coords[:, 1]] = torch.arange(
            len(coords), device=coords.device)
        top_left = coords[(coords[:, 0] % 2 == 0) & (coords[:, 1] % 2 == 0)]
        r, c = top_left[:, 0], top_left[:, 1]
        children = torch.stack([(r + a) * W + c + b
                                for a, b in ((0, 0), (0, 1), (1, 0), (1, 1))],
                               1)  # N/4, 4 in nn.Unfold's kernel order
        coords = torch.div(top_left, 2, rounding_mode='floor')
        return lut[children], coords, _half(hw)

    @staticmethod
    def _merge_tokens(downsample, x, children):
        """Patch merging (B, N, C) -> (B, N/4, 2C) of the cells whose
        children are ``children`` (N/4, 4, on x's device)."""
        B, N, C = x.shape
        x = x[:, children]  # B, N/4, 4, C
        x = x.transpose(2, 3).reshape(B, -1, 4 * C)  # channel-major: Unfold
        return downsample.reduction(downsample.norm(x))  # B, N/4, 2C

    @classmethod
    def _merge(cls, downsample, x, coords, hw):
        """:meth:`_merge_index` then :meth:`_merge_tokens` (one merge on
        its own, for tests). Returns (B, N/4, 2C), coords, map size."""
        children, coords, hw = cls._merge_index(coords, hw)
        return cls._merge_tokens(downsample, x, children.to(x.device)), \
            coords, hw


def _half(hw):
    return hw[0] // 2, hw[1] // 2


__all__ = ['GreenSwinTransformer']

"""PVT-S of UM-MAE (appendix B.1), the fine-tuning backbone.

PVTv1 layout (stride-4 stem, three 2x2 patch merges, four stages) with two
changes from the paper: a fixed sin-cos position embedding is added at the
input stage only, and the spatial-reduction window (SRW) that shrinks keys
and values is an average pooling followed by a 1x1 projection (PVTv2). The
pooling has no weights, so the same weights run with reduction ratios
{4, 2, 1, 1} on UM-MAE's compact input and {8, 4, 2, 1} at fine-tuning.
LayerNorm eps as the release (``mae_pvt_small_256``): 1e-5 in the blocks'
``norm1`` / ``norm2`` and the key/value norm, 1e-6 in the output norms.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmcv.cnn.bricks.transformer import PatchEmbed
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import trunc_normal_
from mmpretrain.models.utils import (build_2d_sincos_position_embedding,
                                     resize_pos_embed)

from mmum.models.layers import merge_2x2
from mmum.models.pretrained import use_strict_pretrained
from mmum.registry import MODELS
from .pretrained_keys import check_pretrained_keys


class SRAttention(BaseModule):
    """Global attention whose keys/values come from a pooled map.

    ``pool`` x ``pool`` windows of the map are averaged, projected (1x1
    conv) and normalised (LayerNorm, eps 1e-5 as released) before the
    key/value projection. The projection and norm exist for every ratio
    (also 1), so changing the ratio never changes the weights.
    """

    def __init__(self, embed_dims: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0., proj_drop: float = 0.) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.kv = nn.Linear(embed_dims, embed_dims * 2, bias=qkv_bias)
        self.sr = nn.Conv2d(embed_dims, embed_dims, kernel_size=1)
        self.norm = nn.LayerNorm(embed_dims)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def reduce(self, x: torch.Tensor, hw: Tuple[int, int],
               pool: int) -> torch.Tensor:
        """(B, h*w, C) -> pooled, projected (B, h/pool * w/pool, C)."""
        B, _, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, *hw)
        x = F.avg_pool2d(x, pool) if pool > 1 else x  # B, C, h/p, w/p
        return self.norm(self.sr(x).flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor, hw: Tuple[int, int],
                pool: int) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.num_heads, -1).transpose(1, 2)
        # 2, B, heads, M, C/heads with M = N / pool^2
        k, v = self.kv(self.reduce(x, hw, pool)).view(
            B, -1, 2, self.num_heads, C // self.num_heads).permute(
                2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class PVTBlock(BaseModule):
    """Pre-norm transformer block with :class:`SRAttention`.

    With ``with_cp`` the block's activations are recomputed in the backward
    instead of being saved (when its input requires grad).
    """

    def __init__(self, embed_dims: int, num_heads: int, mlp_ratio: float,
                 drop_path: float = 0., qkv_bias: bool = True,
                 drop_rate: float = 0., attn_drop_rate: float = 0.,
                 norm_cfg: dict = dict(type='LN', eps=1e-5),
                 with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = SRAttention(embed_dims, num_heads, qkv_bias,
                                attn_drop_rate, drop_rate)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        hidden = int(embed_dims * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dims, hidden), nn.GELU(),
            nn.Linear(hidden, embed_dims), nn.Dropout(drop_rate))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()

    def forward(self, x, hw, pool):

        def inner(x):
            x = x + self.drop_path(self.attn(self.norm1(x), hw, pool))
            return x + self.drop_path(self.mlp(self.norm2(x)))

        if self.with_cp and torch.is_grad_enabled():
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)


class PVTStage(BaseModule):
    """Optional 2x2 patch merge (conv, stride 2; computed on the tokens by
    :func:`~mmum.models.layers.merge_2x2`), then the blocks."""

    def __init__(self, in_dims: Optional[int], embed_dims: int, depth: int,
                 num_heads: int, mlp_ratio: float,
                 drop_paths: Sequence[float], **block_kwargs) -> None:
        super().__init__()
        self.downsample = None if in_dims is None else PatchEmbed(
            in_channels=in_dims, embed_dims=embed_dims, kernel_size=2,
            stride=2, norm_cfg=None)
        self.blocks = ModuleList([
            PVTBlock(embed_dims, num_heads, mlp_ratio, drop_paths[i],
                     **block_kwargs) for i in range(depth)
        ])

    def forward(self, x, hw, pool):
        if self.downsample is not None:  # its conv, run on the tokens
            proj = self.downsample.projection
            x, hw = merge_2x2(x, hw, proj.weight, proj.bias)
        for block in self.blocks:
            x = block(x, hw, pool)
        return x, hw


def _four(values, kind) -> bool:
    """Whether ``values`` is a list/tuple of 4 values of type ``kind``."""
    return isinstance(values, (list, tuple)) and len(values) == 4 and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in values)


class SimMIMMaskToken:
    """Mixin for SimMIM baseline encoders: a learnable ``mask_token``
    (1, 1, C_0) of the first stage's width, truncated normal (std 0.02)
    unless the encoder loads pretrained weights. Put it before the encoder
    class in the bases; use it with :func:`replace_with_mask_token`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims[0]))

    def init_weights(self) -> None:
        super().init_weights()
        if not (isinstance(self.init_cfg, dict)
                and self.init_cfg.get('type') == 'Pretrained'):
            trunc_normal_(self.mask_token, std=.02)


def replace_with_mask_token(x: torch.Tensor, hw: Tuple[int, int],
                            mask: torch.Tensor,
                            token: torch.Tensor) -> torch.Tensor:
    """Tokens ``x`` (B, h*w, C) where ``mask`` (B, h/s, w/s), 1 = masked,
    is upsampled by the integer ``s`` to the token grid and masked tokens
    become ``token`` (1, 1, C)."""
    h, w = hw
    if mask.dim() != 3 or h % mask.shape[1] or w % mask.shape[2] or \
            h // mask.shape[1] != w // mask.shape[2]:
        raise ValueError(
            f'mask of shape {tuple(mask.shape)} does not tile the {h}x{w} '
            'token grid: expected (B, h/s, w/s) for an integer s')
    s = h // mask.shape[1]
    m = mask.repeat_interleave(s, 1).repeat_interleave(s, 2)
    m = m.flatten(1).unsqueeze(-1).type_as(x)  # B, h*w, 1
    return x * (1. - m) + token.to(x.dtype) * m


@MODELS.register_module()
class PVT(BaseModule):
    """Pyramid Vision Transformer (v1 layout) with pooling spatial reduction.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'medium'``, ``'large'``
            or a dict with ``embed_dims``, ``depths``, ``num_heads`` and
            ``mlp_ratios`` (4-element lists).
        img_size (int): Input size the sin-cos position table is built for;
            other sizes interpolate it (bicubic). Defaults to 224.
        sr_ratios (Sequence[int]): Key/value pooling ratio of each stage.
            Defaults to (8, 4, 2, 1).
        out_indices (Sequence[int]): Stages whose (normalised) maps are
            returned. Defaults to (3, ).
        drop_path_rate (float): Stochastic depth, linear over blocks.
        frozen_stages (int): Stem and stages ``<= frozen_stages`` are frozen
            (-1: none).
        qkv_bias (bool): Biases of the query/key/value projections. Defaults
            to True (PVTv1 and UM-MAE; mmpretrain's ``PCPVT`` defaults to
            False, which would change every checkpoint's layout).
        drop_rate (float): Dropout after the position embedding, the
            attention projection and the MLP. Defaults to 0.
        attn_drop_rate (float): Dropout on the attention weights.
            Defaults to 0.
        norm_cfg (dict): Norm of the output maps (``norm{i}``). Defaults to
            ``dict(type='LN', eps=1e-6)`` (UM-MAE's ``norm_layer``).
        block_norm_cfg (dict): Norm of the blocks (``norm1``, ``norm2``).
            Defaults to ``dict(type='LN', eps=1e-5)``: the release builds
            its blocks without its ``norm_layer``, so they have PyTorch's
            default eps. (``PCPVT``'s ``norm_cfg`` sets both; here set both
            arguments.)
        norm_after_stage (bool): ``PCPVT``'s option to normalise the tokens
            passed on to the next stage; only False (PVTv1: each returned map
            has its own output norm ``norm{i}``, the next stage gets the
            un-normalised tokens).
        with_cp (bool): Activation checkpointing of every block (saves
            memory, recomputes in the backward); also on UM-MAE's masked
            path. Defaults to False.
        norm_eval (bool): Keep BatchNorm layers (if ``norm_cfg`` makes any)
            in eval mode during training, as mmpretrain's backbones.
            Defaults to False.
        init_cfg (dict | list, optional): as for every mmengine module;
            ``type='Pretrained'`` loads strictly (see ``pretrained.py``).

    Stands in for mmpretrain's ``PCPVT`` (same ``arch`` names and
    ``in_channels``, ``out_indices``, ``drop_rate``, ``attn_drop_rate``,
    ``drop_path_rate``, ``init_cfg``), but is PVTv1 with pooling spatial
    reduction, so the weights do not load into ``PCPVT`` and back.

    Inputs whose sides are not multiples of 32 are zero-padded at the
    bottom/right (as mmpretrain's Swin does with ``pad_small_map``); the
    returned maps then cover the padded image.
    """

    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], dict(depths=[2, 2, 2, 2])),
        **dict.fromkeys(['s', 'small'], dict(depths=[3, 4, 6, 3])),
        **dict.fromkeys(['m', 'medium'], dict(depths=[3, 4, 18, 3])),
        **dict.fromkeys(['l', 'large'], dict(depths=[3, 8, 27, 3])),
    }
    pvt_v1 = dict(embed_dims=[64, 128, 320, 512], num_heads=[1, 2, 5, 8],
                  mlp_ratios=[8, 8, 4, 4])
    stride = 32

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 img_size: int = 224,
                 in_channels: int = 3,
                 sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 out_indices: Sequence[int] = (3, ),
                 drop_path_rate: float = 0.,
                 frozen_stages: int = -1,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 block_norm_cfg: dict = dict(type='LN', eps=1e-5),
                 norm_after_stage: bool = False,
                 with_cp: bool = False,
                 norm_eval: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        # init_cfg type='Pretrained': mmum's strict version (pretrained.py)
        self.init_cfg = use_strict_pretrained(self.init_cfg)
        arch = self._check_arch(arch)
        if not _four(sr_ratios, int) or any(r < 1 for r in sr_ratios):
            raise ValueError(f'sr_ratios must be a list of 4 positive ints '
                             f'(one per stage, e.g. (8, 4, 2, 1)), got '
                             f'{sr_ratios!r}')
        if norm_after_stage is not False:
            raise ValueError(
                f'norm_after_stage={norm_after_stage!r}: PVT has no norm '
                "between stages (PCPVT's option); each returned map is "
                'normalised by its own output norm norm{i}. Use False.')
        if any(i not in range(4) for i in out_indices):
            raise ValueError(f'out_indices must be in 0..3, got {out_indices}')
        if frozen_stages not in range(-1, 4):
            raise ValueError(
                f'frozen_stages must be in -1..3, got {frozen_stages!r}')
        self.embed_dims = arch['embed_dims']
        self.depths = arch['depths']
        self.sr_ratios = tuple(sr_ratios)
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        self.norm_eval = norm_eval

        self.patch_embed = PatchEmbed(
            in_channels=in_channels, embed_dims=self.embed_dims[0],
            kernel_size=4, stride=4, norm_cfg=None)
        self.patch_resolution = (img_size // 4, img_size // 4)
        # fixed sin-cos table at the input stage only: 1, h*w, C0
        self.register_buffer(
            'pos_embed',
            build_2d_sincos_position_embedding(self.patch_resolution,
                                               self.embed_dims[0]))
        self.drop_after_pos = nn.Dropout(drop_rate)

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = ModuleList()
        for i, depth in enumerate(self.depths):
            self.stages.append(
                PVTStage(None if i == 0 else self.embed_dims[i - 1],
                         self.embed_dims[i], depth, arch['num_heads'][i],
                         arch['mlp_ratios'][i],
                         dpr[sum(self.depths[:i]):sum(self.depths[:i + 1])],
                         qkv_bias=qkv_bias, drop_rate=drop_rate,
                         attn_drop_rate=attn_drop_rate,
                         norm_cfg=block_norm_cfg, with_cp=with_cp))
        for i in self.out_indices:
            self.add_module(f'norm{i}',
                            build_norm_layer(norm_cfg, self.embed_dims[i])[1])
        self._freeze_stages()

    def _check_arch(self, arch) -> dict:
        """The arch dict of a name or a custom dict, or a clear error."""
        if isinstance(arch, str):
            if arch.lower() not in self.arch_zoo:
                raise ValueError(f'PVT arch {arch!r} is not one of '
                                 f'{sorted(set(self.arch_zoo))} or a dict')
            return {**self.pvt_v1, **self.arch_zoo[arch.lower()]}
        keys = {'embed_dims', 'depths', 'num_heads', 'mlp_ratios'}
        if not isinstance(arch, dict) or set(arch) != keys:
            raise ValueError(
                f'PVT arch must be one of {sorted(set(self.arch_zoo))} or a '
                f'custom PVT arch: a dict with keys {sorted(keys)} (a list of '
                f'4 values each); '
                f'got {arch!r}')
        for k in sorted(keys):
            kind = (int, float) if k == 'mlp_ratios' else int
            if not _four(arch[k], kind) or any(v <= 0 for v in arch[k]):
                raise ValueError(
                    f'PVT arch[{k!r}] must be a list of 4 positive '
                    f'{"numbers" if k == "mlp_ratios" else "ints"} (one per '
                    f'stage), got {arch[k]!r}')
        return arch

    def init_weights(self) -> None:
        super().init_weights()
        if isinstance(self.init_cfg, dict) and \
                self.init_cfg.get('type') == 'Pretrained':
            return
        self.apply(self._init_module)

    @staticmethod
    def _init_module(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(m.bias)

    def pos(self, hw: Tuple[int, int]) -> torch.Tensor:
        """The sin-cos table resized to the ``hw`` token grid: 1, h*w, C0."""
        return resize_pos_embed(self.pos_embed, self.patch_resolution, hw,
                                mode='bicubic', num_extra_tokens=0)

    def forward_stages(self, x: torch.Tensor, hw: Tuple[int, int],
                       pools: Sequence[int]) -> tuple:
        """Run the stages on embedded tokens (B, h*w, C0) with key/value
        pooling ``pools``; returns the maps (B, C_i, h_i, w_i) of
        ``out_indices``."""
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw = stage(x, hw, pools[i])
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out.transpose(1, 2).reshape(
                    x.shape[0], -1, *hw).contiguous())
        return tuple(outs)

    def forward(self, x: torch.Tensor) -> tuple:
        H, W = x.shape[-2:]
        x = F.pad(x, (0, -W % self.stride, 0, -H % self.stride))
        x, hw = self.patch_embed(x)  # B, h*w, C0 at stride 4
        return self.forward_stages(x + self.pos(hw), hw, self.sr_ratios)

    # -- fine-tuning support -------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Accept a pre-training checkpoint: drop a ``mask_token`` this model
        does not have, resize the position table, and refuse a checkpoint of
        another architecture with a readable error."""
        key = prefix + 'pos_embed'
        if key in state_dict and \
                state_dict[key].shape != self.pos_embed.shape:
            old = state_dict[key]
            side = math.isqrt(old.shape[1])
            if old.dim() != 3 or side * side != old.shape[1] or \
                    old.shape[2] != self.pos_embed.shape[2]:
                raise ValueError(
                    f'{key} of shape {tuple(old.shape)} is not a square '
                    f'(1, h*w, {self.pos_embed.shape[2]}) position table')
            state_dict[key] = resize_pos_embed(
                old, (side, side), self.patch_resolution, 'bicubic', 0)
        check_pretrained_keys(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """Layer-wise lr decay depth: stem 0, block j of stage i
        ``sum(depths[:i]) + j + 1`` (a stage's patch merge goes with its
        first block), output norms and anything else last."""
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name.startswith(('patch_embed', 'pos_embed', 'mask_token')):
            return 0, num_layers
        if name.startswith('stages.'):
            parts = name.split('.')
            i = int(parts[1])
            j = int(parts[3]) if parts[2] == 'blocks' else 0
            return sum(self.depths[:i]) + j + 1, num_layers
        return num_layers - 1, num_layers

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed] + [
            self.stages[i] for i in range(self.frozen_stages + 1)
        ] + [
            getattr(self, f'norm{i}') for i in self.out_indices
            if i <= self.frozen_stages
        ]
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

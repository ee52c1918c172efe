"""Swin window attention whose relative-position bias comes from a small MLP.

UM-MAE (appendix B.1) follows SwinV2's *continuous* position bias: the bias
of a token pair is an MLP of their log-spaced relative coordinates, so it is
defined for any window size and the window may change between pre-training
and fine-tuning (8 -> 16, or 7 for dense tasks) with no weight surgery.

UM-MAE pre-training may give the tokens their positions in the original
image (:func:`mmum.models.layers.um_positions.original_positions`): the bias
of a pair then comes from the two tokens' original offset, per sample
(:meth:`LogCPB.pairwise`).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.utils import to_2tuple
from mmpretrain.models.utils import ShiftWindowMSA


class LogCPB(nn.Module):
    """Continuous relative-position bias from log-spaced coordinates.

    The MLP's input table and the pair index of a window are non-persistent
    buffers ``coords_{w}`` / ``index_{w}`` (not in the state dict, so
    checkpoints keep their keys): they live on the model's device, follow
    ``.to()``, and a forward reads them without any host-device copy. A
    window met for the first time (e.g. clamped to a small map) gets its
    buffers then, made on the device.

    Args:
        num_heads (int): One bias per head.
        hidden_dims (int): Width of the MLP. Defaults to 256.
        window (int, optional): Window side whose tables are made at
            construction. Defaults to None.
    """

    def __init__(self, num_heads: int, hidden_dims: int = 256,
                 window: Optional[int] = None) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2, hidden_dims), nn.ReLU(inplace=True),
            nn.Linear(hidden_dims, num_heads, bias=False))
        if window is not None:  # the usual window's tables, made up front
            self.tables(window)

    @staticmethod
    def log_coords(window: int, device=None) -> torch.Tensor:
        """All relative offsets of a ``window`` x ``window`` window,
        log-spaced: ``sign(d) * log2(1 + |d|)``. Shape ((2w-1)^2, 2)."""
        return LogCPB.log_grid(
            torch.arange(-(window - 1), window, device=device))

    @staticmethod
    def log_grid(d: torch.Tensor) -> torch.Tensor:
        """Every (row, col) offset pair of the 1-D offsets ``d`` (n,),
        row-major, log-spaced: ``sign(d) * log2(1 + |d|)``. Shape (n^2, 2).
        """
        table = torch.stack(torch.meshgrid(d, d, indexing='ij'), -1)
        return (torch.sign(table) * torch.log2(1 + table.abs())).flatten(0, 1)

    def tables(self, window: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(coords, index)`` of a ``window`` x ``window`` window: the
        ((2w-1)^2, 2) float32 :meth:`log_coords` and the (N, N) int64 index
        of each token pair's offset in it, N = w^2; made on the MLP's device
        the first time and kept as non-persistent buffers."""
        name = f'index_{window}'
        if name not in self._buffers:
            device = self.mlp[0].weight.device
            ar = torch.arange(window, device=device)
            ys, xs = torch.meshgrid(ar, ar, indexing='ij')
            coords = torch.stack([ys.flatten(), xs.flatten()])  # 2, N
            rel = coords[:, :, None] - coords[:, None, :] + window - 1
            self.register_buffer(
                f'coords_{window}', self.log_coords(window, device).float(),
                persistent=False)
            self.register_buffer(
                name, rel[0] * (2 * window - 1) + rel[1], persistent=False)
        return self._buffers[f'coords_{window}'], self._buffers[name]

    def forward(self, window: int) -> torch.Tensor:
        """Bias for a ``window`` x ``window`` window: (num_heads, N, N)."""
        coords, index = self.tables(window)
        table = self.mlp(coords.to(self.mlp[0].weight.dtype))
        return table[index].permute(2, 0, 1)

    def pairwise(self, pos: torch.Tensor, scale: int,
                 window: int) -> torch.Tensor:
        """Bias of every (query, key) pair from per-token positions.

        Args:
            pos (Tensor): (B_, N, 2) integer (row, col) positions of the
                ``N = window^2`` tokens of each window, in steps of
                ``1 / scale`` token (:func:`original_positions`).
            scale (int): Steps per token.
            window (int): Window side on the compact map.

        Returns:
            Tensor: (B_, num_heads, N, N), the MLP at the offset
            ``(pos_q - pos_k) / scale``.

        In UM-MAE's compact window of ``window`` tokens, original offsets
        span at most ``R = 2 * scale * (window - 1) + 1`` steps (the
        original map is twice the compact one, plus the two tokens' places
        in their cells), so the MLP runs once on that ``(2R + 1)^2`` table
        and the pairs gather from it: no MLP per sample or window. Offsets
        beyond it only join tokens that the shifted-window mask keeps apart
        (-100); such pairs read whichever entry their index falls on.
        """
        R, n = 2 * scale * (window - 1) + 1, 4 * scale * (window - 1) + 3
        w = self.mlp[0].weight
        d = torch.arange(-R, R + 1, device=w.device, dtype=w.dtype) / scale
        # n*n x heads; its hidden layer (n*n x hidden, batch-independent:
        # 0.12 MB per block for Swin-T) stays for the backward
        table = self.mlp(self.log_grid(d))
        table = table.t().contiguous()  # heads, n*n
        # table row of offset (dy, dx) is (dy + R) * n + dx + R: the
        # difference of the tokens' codes y * n + x, shifted
        code = pos[..., 0].long() * n + pos[..., 1]  # B_, N
        index = (code[:, :, None] - code[:, None] + (R * n + R)).clamp_(
            0, n * n - 1)  # B_, N, N
        B_, N = code.shape
        return table.index_select(1, index.view(-1)).view(
            -1, B_, N, N).transpose(0, 1)


class CPBWindowMSA(BaseModule):
    """Window multi-head self-attention with a :class:`LogCPB` bias.

    Drop-in for mmpretrain's ``WindowMSA`` (same ``qkv`` / ``proj``), but the
    window size is read from the input, so one module serves any window.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size=None,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 cpb_hidden_dims: int = 256,
                 init_cfg=None) -> None:
        super().__init__(init_cfg)
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.cpb = LogCPB(num_heads, cpb_hidden_dims,
                          window_size and to_2tuple(window_size)[0])
        self.attn_drop = attn_drop
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask=None, positions=None,
                pos_scale: int = 1) -> torch.Tensor:
        """x: (num_windows*B, N, C); mask: (num_windows, N, N) or None;
        positions: None (bias from the offsets inside the window) or
        (num_windows*B, N, 2) int positions in steps of ``1 / pos_scale``
        token (bias per pair, :meth:`LogCPB.pairwise`). Returns
        (num_windows*B, N, C). q, k, v reach ``scaled_dot_product_attention``
        as 4-D tensors, so its fused kernels can run."""
        B_, N, C = x.shape
        window = math.isqrt(N)
        # 3, B_, heads, N, C/heads
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(
            2, 0, 3, 1, 4)
        if positions is not None:  # B_, heads, N, N
            bias = self.cpb.pairwise(positions, pos_scale, window)
            if mask is not None:
                bias = (bias.unflatten(0, (-1, mask.shape[0])) +
                        mask.unsqueeze(1)).flatten(0, 1)
            mask = None
        else:
            bias = self.cpb(window)[None]  # 1, heads, N, N (4-D: fused)
        if mask is not None:
            # shifted windows: the nW masks repeat in every image, so the
            # windows of an image go into the head dimension (a copy of q,
            # k, v) and the mask broadcasts over the images (4-D for SDPA's
            # fused kernels and ONNX; folding the windows into the batch
            # would copy the mask B times instead)
            nW = mask.shape[0]
            q, k, v = (t.reshape(B_ // nW, nW * self.num_heads, N, -1)
                       for t in (q, k, v))
            # 1, nW*heads, N, N
            bias = (bias + mask.unsqueeze(1)).flatten(0, 1)[None]
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.)
        x = x.reshape(B_, self.num_heads, N, -1).transpose(1, 2)
        if torch.compiler.is_exporting():
            # torch.export would record the reshape below as a view of the
            # fused kernel's output layout, which the ONNX lowering (math
            # kernel, another layout) cannot honour: copy explicitly there
            x = x.clone(memory_format=torch.contiguous_format)
        x = x.reshape(B_, N, C)
        return self.proj_drop(self.proj(x))


class CPBShiftWindowMSA(ShiftWindowMSA):
    """mmpretrain's shifted-window attention with two changes.

    - the attention is :class:`CPBWindowMSA`;
    - with ``pad_small_map=False`` a feature map smaller than the window
      *clamps* the window to the map (and stops shifting), as the original
      Swin does, instead of failing: padding a 4x4 map to 8x8 would quadruple
      that stage's work for nothing.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault('window_msa', CPBWindowMSA)
        super().__init__(*args, **kwargs)

    def forward(self, query: torch.Tensor, hw_shape, positions=None,
                pos_scale: int = 1) -> torch.Tensor:
        """query: (B, H*W, C); positions: None or (B, H, W, 2) int token
        positions (steps of ``1 / pos_scale`` token) that set the bias of
        each pair (UM-MAE's original positions)."""
        B, L, C = query.shape
        H, W = hw_shape
        window, shift = self.window_size, self.shift_size
        if min(H, W) <= window and not self.pad_small_map:
            window, shift = min(H, W, window), 0
        query = query.view(B, H, W, C)
        pad_r, pad_b = (window - W % window) % window, (window -
                                                        H % window) % window
        query = F.pad(query, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = query.shape[1:3]
        if shift:
            query = torch.roll(query, shifts=(-shift, -shift), dims=(1, 2))
        attn_mask = self.get_attn_mask((Hp, Wp), window, shift, query.device)
        # nW*B, window*window, C
        windows = self.window_partition(query, window).view(-1, window**2, C)
        if positions is not None:
            if (Hp, Wp) != (H, W):
                raise ValueError(
                    f'per-token positions need windows that tile the map; '
                    f'got a {H}x{W} map and window {window}')
            if shift:
                positions = torch.roll(positions, (-shift, -shift), (1, 2))
            positions = self.window_partition(positions, window).view(
                -1, window**2, 2)  # nW*B, window*window, 2
        windows = self.w_msa(windows, mask=attn_mask, positions=positions,
                             pos_scale=pos_scale)
        x = self.window_reverse(
            windows.view(-1, window, window, C), Hp, Wp, window)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :H, :W].reshape(B, H * W, C)
        return self.drop(x)

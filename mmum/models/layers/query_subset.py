"""Run a ViT block for a subset of its queries.

An MAE-style decoder predicts every patch, but the loss reads only the masked
ones. In the *last* block a token's output depends on all tokens (keys and
values) but only on its own query, residual and MLP, so those can be computed
for the loss tokens alone: same loss, same gradients, less work. With UM-MAE's
75% drop this skips a quarter of the last block's queries, attention output,
projection and MLP, and of the prediction layer.

The same reasoning runs the other way in the *first* block: the input of a
dropped patch is the mask token plus its position, the same in every image,
so its LayerNorm and qkv projection are computed once per position for the
whole batch (:func:`block_shared_rows`).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from mmpretrain.models.backbones.vision_transformer import \
    TransformerEncoderLayer


def _attend_and_ffn(block: TransformerEncoderLayer, q: torch.Tensor,
                    k: torch.Tensor, v: torch.Tensor,
                    residual: torch.Tensor) -> torch.Tensor:
    """The rest of ``block`` once q (B, H, M, E/H), k and v (B, H, L, E/H)
    are known: attention, projection, residual (B, M, D) and FFN."""
    attn = block.attn
    drop = attn.attn_drop if attn.training else 0.
    y = attn.scaled_dot_product_attention(q, k, v, dropout_p=drop)
    y = attn.proj(y.transpose(1, 2).flatten(2))  # B, M, D
    y = residual + attn.out_drop(attn.gamma1(attn.proj_drop(y)))
    return block.ffn(block.ln2(y), identity=y)  # B, M, D


def block_at(block: TransformerEncoderLayer, x: torch.Tensor,
             index: torch.Tensor) -> torch.Tensor:
    """``block(x).gather(1, index)`` without computing the other outputs.

    Args:
        block: mmpretrain ``TransformerEncoderLayer`` (MAE decoder block).
        x (Tensor): (B, L, D) all tokens.
        index (Tensor): (B, M) long, the tokens whose output is wanted.
    Returns:
        Tensor: (B, M, D).
    """
    attn = block.attn
    if getattr(attn, 'v_shortcut', False):  # output mixes in all values
        return block(x).gather(1, index.unsqueeze(-1).expand(-1, -1,
                                                             x.shape[-1]))
    B, L, D = x.shape
    M, H, E = index.shape[1], attn.num_heads, attn.embed_dims
    idx = index.unsqueeze(-1).expand(-1, -1, D)
    h = block.ln1(x)  # B, L, D
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h.gather(1, idx), w[:E], None if b is None else b[:E])
    kv = F.linear(h, w[E:], None if b is None else b[E:])  # B, L, 2E
    q = q.view(B, M, H, -1).transpose(1, 2)  # B, H, M, E/H
    k, v = kv.view(B, L, 2, H, -1).permute(2, 0, 3, 1, 4)  # B, H, L, E/H
    return _attend_and_ffn(block, q, k, v, x.gather(1, idx))  # B, M, D


def block_shared_rows(block: Optional[TransformerEncoderLayer],
                      x: torch.Tensor, rows: torch.Tensor,
                      shared: torch.Tensor) -> torch.Tensor:
    """``block(full)`` where ``full`` is ``shared`` in every image with the
    tokens ``x`` put at ``rows``, computing the shared rows' LayerNorm and
    qkv projection once for the batch instead of once per image.

    Same values as the block on the assembled input (to float rounding) and
    the same gradients; at UM-MAE's 75% drop and batch ``B`` the first
    block's qkv runs on ``B * L / 4 + L`` rows instead of ``B * L``.

    Args:
        block: mmpretrain ``TransformerEncoderLayer`` (MAE decoder block),
            or None: then the assembled input is returned.
        x (Tensor): (B, N, D) the tokens that differ per image.
        rows (Tensor): (B, N) long, their places among the ``L`` tokens;
            distinct within an image.
        shared (Tensor): (L, D) every other token, the same in all images.
    Returns:
        Tensor: (B, L, D).
    """
    (B, N, D), L = x.shape, shared.shape[0]
    idx = rows.unsqueeze(-1).expand(-1, -1, D)
    full = shared.expand(B, L, D).scatter(1, idx, x)  # B, L, D
    if block is None:
        return full
    attn = block.attn
    if getattr(attn, 'v_shortcut', False):  # output mixes in all values
        return block(full)
    H, E = attn.num_heads, attn.embed_dims
    qkv = attn.qkv(block.ln1(torch.cat([shared, x.reshape(B * N, D)])))
    qkv = qkv[:L].expand(B, L, 3 * E).scatter(
        1, rows.unsqueeze(-1).expand(-1, -1, 3 * E),
        qkv[L:].view(B, N, 3 * E))  # B, L, 3E
    q, k, v = qkv.view(B, L, 3, H, -1).permute(2, 0, 3, 1, 4)  # B, H, L, E/H
    return _attend_and_ffn(block, q, k, v, full)  # B, L, D


def blocks_at(blocks, x: torch.Tensor,
              index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run ``blocks`` on ``x`` (B, L, D); with ``index`` (B, M) return only
    those tokens' outputs (B, M, D), the last block computing just their
    queries (:func:`block_at`)."""
    *blocks, last = list(blocks) or [None]
    for block in blocks:
        x = block(x)  # B, L, D
    if index is None:
        return x if last is None else last(x)
    if last is None:
        return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return block_at(last, x, index)  # B, M, D

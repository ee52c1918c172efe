"""Group Window Attention of GreenMIM (paper §3.2-3.4).

The visible tokens of a stage are split by window; the windows (with uneven
numbers of visible tokens) are packed into equal-size groups by the optimal
grouping, and one attention runs per group with a block-diagonal mask so a
token only sees tokens of its own window (Fig. 3). The relative-position bias
of every pair is gathered from the tokens' true grid positions.

Shifted windows: Swin's cyclic shift by ``s`` followed by its region mask
lets two tokens attend iff they fall into the same cell of the grid offset by
``ws - s`` (no wrap-around), so a shifted block simply uses those cells as
its windows. Inside one cell no pair wraps around, so the bias index of the
true coordinates equals the one Swin uses on the rolled map.

Where it runs: :func:`plan_groups` reads the mask (the optimal grouping is a
Python search) and runs on the host before the step; its
:class:`GroupLayout` holds O(slots) integers and crosses to the device with
the rest of the step's plan. :meth:`GroupLayout.expand` then builds the
O(slots x group size) pair tables on the device, without reading any data.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from mmpretrain.models.utils.attention import WindowMSA

from mmum.registry import MODELS
from .optimal_grouping import optimal_grouping


class GroupPlan(NamedTuple):
    """How the ``N`` visible tokens of a stage are packed into ``G`` groups of
    ``group_size`` slots (shared by all blocks with the same shift)."""
    index: torch.Tensor  # (G*gs,) token of each slot; N marks a padding slot
    slot: torch.Tensor  # (N,) slot of each token
    allowed: torch.Tensor  # (G, gs, gs) bool, same window (or both padding)
    rel_index: Optional[torch.Tensor]  # (G, gs, gs) bias-table row per pair

    @property
    def group_size(self) -> int:
        return self.allowed.shape[-1]


class GroupLayout(NamedTuple):
    """The host-planned part of a :class:`GroupPlan`: O(slots) integers,
    one (G, gs, 4) table so that ``G`` and ``gs`` are one pair of sizes."""
    slots: torch.Tensor  # (G, gs, 4) per slot: token (N = padding), window
    # id (-1 = padding), grid row, grid col (0, 0 for padding)
    slot: torch.Tensor  # (N,) slot of each token

    def expand(self, window_size: Optional[int]) -> GroupPlan:
        """The :class:`GroupPlan`, computed where the layout lives (the
        device, from data already there: no read-back). ``window_size``
        gives the relative-position bias index of every pair (Swin);
        None leaves ``rel_index`` out (Twins' LSA has no bias)."""
        label = self.slots[..., 1]  # G, gs
        allowed = label[:, :, None] == label[:, None, :]  # G, gs, gs
        rel_index = None
        if window_size is not None:
            c = self.slots[..., 2:]  # G, gs, 2
            rel = c[:, :, None] - c[:, None] + window_size - 1
            rel_index = rel[..., 0] * (2 * window_size - 1) + rel[..., 1]
            rel_index = rel_index.masked_fill(~allowed, 0)  # G, gs, gs
        index = self.slots[..., 0].reshape(-1)  # G*gs
        return GroupPlan(index, self.slot, allowed, rel_index)


def mark_groups_dynamic(layout: GroupLayout) -> None:
    """Tell ``torch.compile`` that the group count ``G`` and size ``gs``
    change with every mask: ``G`` unbacked (no specialisation to 1, which a
    stage with few windows often draws), ``gs`` dynamic from the first
    compile. One graph then serves every mask of a given image and batch
    size (tests/test_green_mim_compile.py); without the marks each new
    ``G`` / ``gs`` pattern recompiles. No effect in eager mode."""
    torch._dynamo.decorators.mark_unbacked(layout.slots, 0)
    torch._dynamo.maybe_mark_dynamic(layout.slots, 1)


def window_ids(coords: torch.Tensor, window_size: int,
               shift_size: int) -> torch.Tensor:
    """Window of each token (N, 2 grid coords) for a block with the given
    shift, as an integer id increasing in row-major order of the windows."""
    offset = (window_size - shift_size) % window_size
    cell = torch.div(coords + offset, window_size, rounding_mode='floor')
    return cell[:, 0] * (1 << 20) + cell[:, 1]


def plan_groups(coords: torch.Tensor, window_size: int, shift_size: int,
                channels: int) -> GroupLayout:
    """Group the visible tokens at ``coords`` (N, 2, row-major order, on the
    host) for windows of ``window_size`` shifted by ``shift_size``; the
    group size is chosen by the optimal grouping with the Eq. 8 cost for
    ``channels``. Reads ``coords`` (``tolist``): plan on the host."""
    num_tokens = coords.shape[0]
    win = window_ids(coords, window_size, shift_size)
    win_sorted, order = torch.sort(win, stable=True)
    counts = torch.unique_consecutive(win_sorted, return_counts=True)[1]
    counts_list = counts.tolist()
    gs, groups, _ = optimal_grouping(counts_list, channels)

    # first slot of every window: its group's start + the windows before it
    first = [0] * len(counts_list)
    for g, members in enumerate(groups):  # loops over windows, not tokens
        start = g * gs
        for w in members:
            first[w] = start
            start += counts_list[w]
    first = torch.tensor(first, device=coords.device)
    win_of_sorted = torch.repeat_interleave(
        torch.arange(len(counts_list), device=coords.device), counts)
    rank = torch.arange(num_tokens, device=coords.device) - (
        torch.cumsum(counts, 0) - counts)[win_of_sorted]
    slot = torch.empty_like(order)
    slot[order] = first[win_of_sorted] + rank  # (N,)

    num_slots = len(groups) * gs
    index = coords.new_full((num_slots, ), num_tokens)
    index[slot] = torch.arange(num_tokens, device=coords.device)
    label = coords.new_full((num_slots, ), -1)  # -1: padding
    label[slot] = win
    slot_coords = coords.new_zeros(num_slots, 2)
    slot_coords[slot] = coords
    slots = torch.cat([index[:, None], label[:, None], slot_coords], 1)
    return GroupLayout(slots.view(-1, gs, 4), slot)


def build_group_plan(coords: torch.Tensor, window_size: int, shift_size: int,
                     channels: int) -> GroupPlan:
    """:func:`plan_groups` and :meth:`GroupLayout.expand` in one call, with
    the relative-position bias index (tests and analysis tools)."""
    return plan_groups(coords, window_size, shift_size,
                       channels).expand(window_size)


def grouped_attention(qkv: torch.Tensor, plan: GroupPlan, num_heads: int,
                      attn_mask: torch.Tensor, dropout_p: float,
                      scale: float) -> torch.Tensor:
    """Attention of the visible tokens within the groups of ``plan``.

    Args:
        qkv: (B, N, 3C) the tokens' joint q, k, v projection.
        plan: their :class:`GroupPlan`.
        num_heads: ``nh``.
        attn_mask: (G, nh or 1, gs, gs), bool (True = may attend) or float
            (added to the logits; -inf where not allowed).
        dropout_p: attention dropout.
        scale: logit scale.

    Returns:
        (B, N, C): each token's attention output, before the projection.
    """
    B, N, C3 = qkv.shape
    C, G, gs, nh = C3 // 3, plan.allowed.shape[0], plan.group_size, num_heads
    qkv = torch.cat([qkv, qkv.new_zeros(B, 1, C3)], 1)[:, plan.index]
    # B, G*gs, 3C -> q, k, v (B, G*nh, gs, C/nh), each copied into its own
    # tensor: the groups are folded into the head dimension so the mask
    # broadcasts over the batch without a copy, and autograd keeps just q,
    # k, v for the backward (SDPA's math path saves its scaled copies of q
    # and k and the v it gets; a view of one joint qkv tensor would keep all
    # of it alive)
    qkv = qkv.view(B, G, gs, 3, nh, C // nh)
    q, k, v = (qkv[:, :, :, i].transpose(2, 3).contiguous().view(
        B, G * nh, gs, C // nh) for i in range(3))
    attn_mask = attn_mask.expand(G, nh, gs, gs).reshape(1, G * nh, gs, gs)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
        scale=scale)  # B, G*nh, gs, C/nh
    out = out.view(B, G, nh, gs, C // nh).permute(0, 1, 3, 2, 4)
    return out.reshape(B, G * gs, C)[:, plan.slot]  # B, N, C


@MODELS.register_module()
class GroupWindowAttention(WindowMSA):
    """Window attention on the visible tokens of a sparse feature map.

    Same parameters as mmpretrain's ``WindowMSA`` (``qkv``, ``proj``,
    ``relative_position_bias_table``, ``relative_position_index``), so its
    weights load both ways; given a :class:`GroupPlan` it attends within the
    groups, otherwise it is ``WindowMSA``.
    """

    def forward(self,
                x: torch.Tensor,
                mask: Optional[torch.Tensor] = None,
                plan: Optional[GroupPlan] = None) -> torch.Tensor:
        """With a ``plan``: x (B, N, C) visible tokens -> (B, N, C). Without:
        ``WindowMSA.forward`` on full windows (the dense Swin path)."""
        if plan is None:
            return super().forward(x, mask)
        qkv = self.qkv(x)  # B, N, 3C (padding costs only inside attention)
        bias = self.relative_position_bias_table[plan.rel_index]  # G,gs,gs,nh
        bias = bias.permute(0, 3, 1, 2).to(qkv.dtype)
        bias = bias.masked_fill(~plan.allowed[:, None], float('-inf'))
        out = grouped_attention(qkv, plan, self.num_heads, bias,
                                self.attn_drop.p if self.training else 0.,
                                self.scale)
        return self.proj_drop(self.proj(out))


__all__ = [
    'GroupLayout', 'GroupPlan', 'GroupWindowAttention', 'build_group_plan',
    'grouped_attention', 'mark_groups_dynamic', 'plan_groups', 'window_ids'
]

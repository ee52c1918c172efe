"""Move index tables planned on the host to the device in one copy.

GreenMIM plans every step on the host (the mask, the optimal grouping, the
gather and sparse-convolution indices; all of it depends on the mask only).
:func:`plan_to_device` packs such a plan, a tree of dicts, lists, tuples and
NamedTuples whose leaves are tensors or plain Python values, into one byte
buffer (page-locked when the target is a CUDA device), copies it with a
single non-blocking host-to-device transfer and returns the same tree whose
tensors are views of the device buffer. The host never waits for the
device, and the model only indexes with device tensors.
"""
from typing import Any, List, NamedTuple, Optional, Tuple

import torch
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

_ALIGN = 8  # bytes: every leaf starts at a multiple of the widest dtype
_ZEROS = torch.zeros(_ALIGN, dtype=torch.uint8)


class PackedPlan(NamedTuple):
    """A plan's tensors in one host byte buffer; see :func:`pack_plan`."""
    buffer: torch.Tensor  # (bytes,) uint8
    # per leaf: (byte offset, dtype, shape) of a tensor, or None
    layout: List[Optional[Tuple[int, torch.dtype, torch.Size]]]
    leaves: List[Any]  # the plain (non-tensor) leaves; None for tensors
    spec: TreeSpec

    def to(self, device: torch.device) -> Any:
        """The plan on ``device``: one ``non_blocking`` copy of the buffer
        (none if it is there already); every tensor leaf is a view of it
        with its own dtype and shape."""
        buffer = self.buffer.to(device, non_blocking=True)  # the one copy
        out = []
        for leaf, where in zip(self.leaves, self.layout):
            if where is None:
                out.append(leaf)
                continue
            start, dtype, shape = where
            nbytes = shape.numel() * dtype.itemsize
            out.append(buffer[start:start + nbytes].view(dtype).view(shape))
        return tree_unflatten(out, self.spec)


def pack_plan(tree: Any, pin_memory: bool = False) -> PackedPlan:
    """Copy the tensor leaves of ``tree`` (on the host, any dtype) into one
    byte buffer, each at a multiple of 8 bytes; ``pin_memory`` page-locks
    it (needs CUDA).

    Raises:
        ValueError: a tensor leaf that is not on the CPU.
    """
    leaves, spec = tree_flatten(tree)
    layout, plain, parts, size = [], [], [], 0
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            layout.append(None)
            plain.append(leaf)
            continue
        if leaf.device.type != 'cpu':
            raise ValueError(f'plan tensors must be planned on the host, '
                             f'got one on {leaf.device}')
        layout.append((size, leaf.dtype, leaf.shape))
        plain.append(None)
        data = leaf.contiguous().view(-1).view(torch.uint8)
        pad = -data.numel() % _ALIGN
        parts += [data, _ZEROS[:pad]] if pad else [data]
        size += data.numel() + pad
    buffer = torch.empty(size, dtype=torch.uint8, pin_memory=pin_memory)
    if parts:
        torch.cat(parts, out=buffer)  # one copy into the (pinned) buffer
    return PackedPlan(buffer, layout, plain, spec)


def plan_to_device(tree: Any, device: torch.device) -> Any:
    """``tree`` with its tensor leaves on ``device``, moved in one copy.

    Args:
        tree: dicts / lists / tuples / NamedTuples of host tensors and plain
            values (ints, None, ...).
        device: the target. On the CPU the tree is returned as it is.

    Returns:
        The same structure; on another device every tensor leaf is a view
        (same dtype and shape) of one device buffer, filled by one
        ``non_blocking`` copy from a page-locked buffer on CUDA (pageable
        elsewhere, e.g. ``meta``).

    Raises:
        ValueError: a tensor leaf that is not on the CPU.
    """
    device = torch.device(device)
    if device.type == 'cpu':
        return tree
    return pack_plan(tree, pin_memory=device.type == 'cuda').to(device)


__all__ = ['PackedPlan', 'pack_plan', 'plan_to_device']

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
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

_ALIGN = 8  # bytes: every leaf starts at a multiple of the widest dtype


def plan_to_device(tree: Any, device: torch.device) -> Any:
    """``tree`` with its tensor leaves on ``device``, moved in one copy.

    Args:
        tree: dicts / lists / tuples / NamedTuples of host tensors (any
            dtype, contiguous or not) and plain values (ints, None, ...).
        device: the target. On the CPU the tree is returned as it is.

    Returns:
        The same structure; every tensor leaf is a view (same dtype and
        shape) of one device buffer filled by one ``non_blocking`` copy from
        a page-locked buffer on CUDA (pageable elsewhere, e.g. ``meta``).

    Raises:
        ValueError: a tensor leaf that is not on the CPU.
    """
    device = torch.device(device)
    if device.type == 'cpu':
        return tree
    leaves, spec = tree_flatten(tree)
    layout, size = [], 0
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.device.type != 'cpu':
                raise ValueError(f'plan tensors must be planned on the host, '
                                 f'got one on {leaf.device}')
            layout.append((size, leaf.dtype, leaf.shape))
            size += -(-leaf.numel() * leaf.element_size() // _ALIGN) * _ALIGN
        else:
            layout.append(None)
    host = torch.empty(size, dtype=torch.uint8,
                       pin_memory=device.type == 'cuda')
    for leaf, where in zip(leaves, layout):
        if where is not None and leaf.numel():
            start = where[0]
            flat = leaf.contiguous().view(-1).view(torch.uint8)
            host[start:start + flat.numel()].copy_(flat)
    buffer = host.to(device, non_blocking=True)  # the one transfer
    out = []
    for leaf, where in zip(leaves, layout):
        if where is None:
            out.append(leaf)
            continue
        start, dtype, shape = where
        nbytes = shape.numel() * leaf.element_size()
        out.append(buffer[start:start + nbytes].view(dtype).view(shape))
    return tree_unflatten(out, spec)


__all__ = ['plan_to_device']

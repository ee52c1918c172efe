"""Float32 regions inside an autocast forward."""
from contextlib import nullcontext

import torch


def autocast_off(device: torch.device):
    """A context in which autocast is off for tensors on ``device``
    (``torch.autocast(type, enabled=False)``); a no-op on devices without
    autocast, e.g. ``meta`` (the sync-free step tests). Used where targets,
    normalisation statistics and losses must stay float32 under AMP."""
    kind = torch.device(device).type
    if not torch.amp.is_autocast_available(kind):
        return nullcontext()
    return torch.autocast(kind, enabled=False)

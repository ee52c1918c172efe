"""Weight initialisation of the released UM-MAE models (MAE's recipe).

The official code (implus/UM-MAE, ``MaskedAutoencoderSwin`` /
``MaskedAutoencoderPVT.initialize_weights``) initialises

- every ``nn.Linear`` with Xavier-uniform weights and zero bias;
- every ``nn.LayerNorm`` with weight 1, bias 0;
- every ``nn.Conv2d`` with ``N(0, sqrt(2 / fan_out))`` weights,
  ``fan_out = k_h * k_w * out_channels / groups``, and zero bias; the
  relative-position bias MLP of its Swin is a pair of 1x1 convs, so mmum's
  :class:`LogCPB` linears get this rule (``fan_out = out_features``);
- the patch-embedding conv like a linear map: Xavier-uniform on its
  ``(out_channels, in_channels * k_h * k_w)`` matrix (bias 0).
"""
import math
from typing import Optional

import torch.nn as nn

from .cpb_window_attention import LogCPB


def init_as_released(module: nn.Module,
                     patch_proj: Optional[nn.Conv2d] = None) -> None:
    """Initialise all ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Conv2d`` of
    ``module`` in place as the release does (module docstring); other
    parameters (mask tokens, fixed position tables) are left alone.

    Args:
        module (nn.Module): Encoder or decoder to initialise.
        patch_proj (nn.Conv2d, optional): The patch-embedding conv, treated
            as a linear map.
    """
    cpb = {id(lin) for m in module.modules() if isinstance(m, LogCPB)
           for lin in m.mlp if isinstance(lin, nn.Linear)}
    for m in module.modules():
        if isinstance(m, nn.Linear) and id(m) in cpb:  # a 1x1 conv there
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / m.out_features))
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * \
                m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    if patch_proj is not None:
        w = patch_proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

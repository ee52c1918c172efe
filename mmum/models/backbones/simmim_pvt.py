from typing import Optional

import torch

from mmum.registry import MODELS
from .pvt import PVT, SimMIMMaskToken, replace_with_mask_token


@MODELS.register_module()
class SimMIMPVT(SimMIMMaskToken, PVT):
    """PVT encoder for SimMIM: the whole image goes in and masked patches
    become a learnable ``mask_token`` after the patch embedding (paper
    Fig. 1c), with the fine-tuning reduction ratios. The SimMIM baseline of
    UM-MAE's Table 3; its weights load into :class:`PVT` like UM-MAE's.

    ``forward(x, mask)``: x (B, 3, H, W); mask (B, H/s, W/s), 1 = masked,
    on any grid that tiles the stride-4 tokens (mmpretrain's
    ``SimMIMMaskGenerator`` gives ``model_patch_size=4``, i.e. s = 4).
    """

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> tuple:
        if mask is None:
            return super().forward(x)
        H, W = x.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(f'SimMIM PVT: image {H}x{W} must be a multiple '
                             f'of the encoder stride {self.stride}')
        x, hw = self.patch_embed(x)  # B, h*w, C0 at stride 4
        x = replace_with_mask_token(x, hw, mask, self.mask_token)
        return self.forward_stages(x + self.pos(hw), hw, self.sr_ratios)

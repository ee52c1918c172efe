from typing import Optional

import torch
from mmpretrain.models import SVT

from mmum.registry import MODELS
from .pvt import SimMIMMaskToken, replace_with_mask_token


@MODELS.register_module()
class SimMIMSVT(SimMIMMaskToken, SVT):
    """Twins-SVT encoder for SimMIM, the baseline of GreenMIM's Twins-L
    (Huang et al. 2022, App. A.1): the whole image goes in and masked
    stride-4 tokens become a learnable ``mask_token`` after the first patch
    embedding; everything else is mmpretrain's ``SVT`` (its weights load
    into ``SVT`` once ``mask_token`` is dropped).

    ``forward(x, mask)``: x (B, 3, H, W); mask (B, H/s, W/s), 1 = masked, on
    any grid that tiles the stride-4 tokens (mmpretrain's
    ``SimMIMMaskGenerator`` with ``model_patch_size=4``). Returns SVT's
    dense maps (B, C_i, H_i, W_i) per ``out_indices``.
    """

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> tuple:
        if mask is None:
            return super().forward(x)
        B = x.shape[0]
        outs = []
        for i in range(self.num_stage):  # SVT.forward + the mask token
            x, hw = self.patch_embeds[i](x)  # B, h*w, C_i
            if i == 0:
                x = replace_with_mask_token(x, hw, mask, self.mask_token)
            x = self.position_encoding_drops[i](x)
            for j, blk in enumerate(self.stages[i]):
                x = blk(x, hw)
                if j == 0:
                    x = self.position_encodings[i](x, hw)
            x = getattr(self, f'norm_after_stage{i}')(x)
            x = x.reshape(B, *hw, -1).permute(0, 3, 1, 2).contiguous()
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


__all__ = ['SimMIMSVT']

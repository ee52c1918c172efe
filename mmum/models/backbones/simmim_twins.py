from typing import Optional

import torch
from mmpretrain.models import SVT

from mmum.registry import MODELS
from .green_twins import use_released_twins_parts
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

    As :class:`GreenTwins`, ``norm_cfg`` also sets the patch-embedding norms
    and ``peg_residual=False`` gives the released GreenMIM PEG (no
    residual), so the baseline can share GreenMIM Twins-L's architecture.
    """

    def __init__(self, *args, peg_residual: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        norm_cfg = args[7] if len(args) > 7 else kwargs.get(
            'norm_cfg', dict(type='LN'))  # SVT's 8th argument
        use_released_twins_parts(self, norm_cfg, peg_residual)

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

from mmpretrain.models import SimMIMSwinTransformer

from mmum.registry import MODELS
from .cpb_swin import CPBSwinTransformer


@MODELS.register_module()
class SimMIMCPBSwinTransformer(SimMIMSwinTransformer, CPBSwinTransformer):
    """mmpretrain's SimMIM Swin encoder with UM-MAE's continuous position
    bias, so the SimMIM baseline (paper Table 3) has the same architecture
    as UM-MAE's Swin and both load into :class:`CPBSwinTransformer`.

    Only the class order does the work: ``SimMIMSwinTransformer`` gives the
    ``mask_token`` and ``forward(x, mask)``, ``CPBSwinTransformer`` swaps
    in the CPB attention.
    """

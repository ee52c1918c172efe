from mmpretrain.models import SimMIMSwinTransformer

from mmum.registry import MODELS
from .cpb_swin import CPBSwinTransformer


@MODELS.register_module()
class SimMIMCPBSwinTransformer(SimMIMSwinTransformer, CPBSwinTransformer):
    """mmpretrain's SimMIM Swin encoder with UM-MAE's continuous position
    bias, so the SimMIM baseline (paper Table 3) has the same architecture
    as UM-MAE's Swin and both load into :class:`CPBSwinTransformer`.

    The class order does the work: ``SimMIMSwinTransformer`` gives the
    ``mask_token`` and ``forward(x, mask)``, ``CPBSwinTransformer`` swaps
    in the CPB attention; ``cpb_hidden_dims`` and ``patch_merging`` (which
    mmpretrain's SimMIM constructor does not pass on) are applied after it,
    so the baseline can have UM-MAE's released layout.

    Args:
        cpb_hidden_dims (int): Width of the bias MLP. Defaults to 256.
        patch_merging (str): ``'linear'`` or ``'conv'``. Defaults to
            ``'linear'``.
        **kwargs: Arguments of mmpretrain's ``SimMIMSwinTransformer``.
    """

    def __init__(self, *args, cpb_hidden_dims: int = 256,
                 patch_merging: str = 'linear', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_cpb_parts(cpb_hidden_dims, patch_merging)

from .cpb_swin import CPBSwinTransformer
from .um_swin import UMSwinTransformer

__all__ = ['CPBSwinTransformer', 'UMSwinTransformer']
from .green_swin import GreenSwinTransformer  # noqa: E402
__all__ += ['GreenSwinTransformer']
from .pvt import PVT  # noqa: E402
from .simmim_pvt import SimMIMPVT  # noqa: E402
from .simmim_swin import SimMIMCPBSwinTransformer  # noqa: E402
from .um_pvt import UMPVT  # noqa: E402
from .um_vit import UMViT  # noqa: E402
__all__ += ['PVT', 'SimMIMPVT', 'SimMIMCPBSwinTransformer', 'UMPVT', 'UMViT']
from .green_twins import GreenTwins  # noqa: E402
from .simmim_twins import SimMIMSVT  # noqa: E402
__all__ += ['GreenTwins', 'SimMIMSVT']

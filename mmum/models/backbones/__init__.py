from .cpb_swin import CPBSwinTransformer
from .um_swin import UMSwinTransformer

__all__ = ['CPBSwinTransformer', 'UMSwinTransformer']
from .green_swin import GreenSwinTransformer  # noqa: E402
__all__ += ['GreenSwinTransformer']

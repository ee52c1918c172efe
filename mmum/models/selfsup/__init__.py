from .um_mae import UMMAE

__all__ = ['UMMAE']
from .local_mim import (LocalMIM, LocalMIMSwin, LocalMIMViT,  # noqa: E402
                        UMLocalMIM)
__all__ += ['LocalMIM', 'LocalMIMViT', 'LocalMIMSwin', 'UMLocalMIM']
from .green_mim import GreenMIM, GreenMIMDecoder  # noqa: E402
__all__ += ['GreenMIM', 'GreenMIMDecoder']

from .um_mae import UMMAE

__all__ = ['UMMAE']
from .local_mim import (LocalMIM, LocalMIMSwin, LocalMIMViT,  # noqa: E402
                        UMLocalMIM)
__all__ += ['LocalMIM', 'LocalMIMViT', 'LocalMIMSwin', 'UMLocalMIM']
from .green_mim import (GreenMIM, GreenMIMDataPreprocessor,  # noqa: E402
                        GreenMIMDecoder)
__all__ += ['GreenMIM', 'GreenMIMDataPreprocessor', 'GreenMIMDecoder']

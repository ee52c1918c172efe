from .um_mae_decoder import UMMAEPretrainDecoder

__all__ = ['UMMAEPretrainDecoder']
from .local_mim_decoder import (LocalMIMCompactDecoder,  # noqa: E402
                                LocalMIMDecoder)
__all__ += ['LocalMIMDecoder', 'LocalMIMCompactDecoder']
from .um_mae_embed_first_decoder import UMMAEEmbedFirstDecoder  # noqa: E402
__all__ += ['UMMAEEmbedFirstDecoder']

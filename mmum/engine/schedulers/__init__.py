__all__ = []
from .freezeout import FreezeOutLR, freeze_params  # noqa: E402
__all__ += ['FreezeOutLR', 'freeze_params']

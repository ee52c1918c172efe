__all__ = []
from .hog_target import HOGTarget  # noqa: E402
__all__ += ['HOGTarget']

from .safe_loading import SafeLoadImageFromFile
from .uniform_masking import UniformMasking

__all__ = ['UniformMasking']
__all__ += ['SafeLoadImageFromFile']

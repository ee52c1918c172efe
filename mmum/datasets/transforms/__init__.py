from .uniform_masking import UniformMasking

__all__ = ['UniformMasking']

from .reconstruction import reconstruction_figure, save_reconstruction

__all__ = ['reconstruction_figure', 'save_reconstruction']

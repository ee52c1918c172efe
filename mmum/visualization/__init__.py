from .reconstruction import (reconstruction_figure, save_reconstruction,
                             visualize_um_mae)

__all__ = ['reconstruction_figure', 'save_reconstruction', 'visualize_um_mae']

from .reconstruction import (figure, find_uniform_masking, hog_figure,
                             load_images, reconstruct, reconstruction_figure,
                             save_figure, save_reconstruction, visualize,
                             visualize_um_mae)

__all__ = [
    'reconstruction_figure', 'hog_figure', 'save_figure',
    'save_reconstruction', 'find_uniform_masking', 'load_images',
    'reconstruct', 'figure', 'visualize', 'visualize_um_mae'
]

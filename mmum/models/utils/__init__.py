from .data_preprocessor import MaskedDataPreprocessor, UMMAEDataPreprocessor

__all__ = ['MaskedDataPreprocessor', 'UMMAEDataPreprocessor']

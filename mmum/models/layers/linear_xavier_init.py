"""Xavier-uniform init of a layer's weight seen as a linear map.

The released GreenMIM (like MAE) initialises its patch-embedding convolution
"like nn.Linear": Xavier-uniform on the weight viewed as a matrix
(out_channels, in_channels * kh * kw), i.e. fan_out = out_channels. mmengine's
``Xavier`` on a ``Conv2d`` uses fan_out = out_channels * kh * kw instead, a
4x smaller bound for a 4x4 patch. The bias is left as it is (the released code
keeps PyTorch's default for the convolution's bias).
"""
import torch.nn as nn
from mmengine.model.weight_init import BaseInit, update_init_info

from mmum.registry import WEIGHT_INITIALIZERS


@WEIGHT_INITIALIZERS.register_module(name='LinearXavier')
class LinearXavierInit(BaseInit):
    """``init_cfg=dict(type='mmum.LinearXavier', layer='Conv2d')``: weight
    ``W`` (out, ...) gets U(-a, a) with
    ``a = gain * sqrt(6 / (out + W[0].numel()))`` (Glorot & Bengio 2010 with
    the fans of ``W.view(out, -1)``); biases are not touched.

    Args:
        gain (float): scaling factor. Defaults to 1.
        layer (str | list[str]): class names of the layers to initialise
            (required: this init has no whole-module meaning).
    """

    def __init__(self, gain: float = 1., **kwargs):
        super().__init__(**kwargs)
        if not self.layer:
            raise ValueError('LinearXavier needs `layer` (e.g. '
                             "layer='Conv2d'), got none")
        self.gain = gain

    def __call__(self, module: nn.Module) -> None:
        layers = set(self.layer)

        def init(m):
            names = {type(m).__name__} | {b.__name__ for b in type(m).__mro__}
            if names & layers and getattr(m, 'weight', None) is not None:
                w = m.weight.data
                nn.init.xavier_uniform_(w.view(w.shape[0], -1), self.gain)

        module.apply(init)
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self) -> str:
        return (f'{self.__class__.__name__}: gain={self.gain}, weight seen '
                'as (out, fan_in), bias untouched')


__all__ = ['LinearXavierInit']

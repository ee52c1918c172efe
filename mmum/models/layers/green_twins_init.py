"""The released GreenMIM Twins-L initialisation (LayneH/GreenMIM,
``green_mim_twins_large_patch4_dec512b1``), for a ``GreenTwins`` / ``SVT``
backbone.

The release builds the encoder (Twins' ``_init_weights``: dense ``Conv2d``
biases zero), then its MAE wrapper applies Xavier-uniform to every
``nn.Conv2d`` weight seen as a matrix (out, in * kh * kw) and to every
``nn.Linear`` weight (zero bias), LayerNorm 1 / 0. Its sparse convolutions
(``spconv`` modules: the patch embeddings of stages 2-4 and the spatial
reduction of global sub-sampled attention) are not ``nn.Conv2d``, so they
keep spconv's own init, which is PyTorch's ``Conv2d`` default
(``kaiming_uniform_(a=sqrt(5))`` weight, U(+-1/sqrt(fan_in)) bias).
"""
import re

import torch.nn as nn
from mmengine.model.weight_init import BaseInit, update_init_info

from mmum.registry import WEIGHT_INITIALIZERS

# GreenTwins / SVT names of the convolutions the release computes with spconv
SPARSE_CONV = re.compile(r'(^|\.)(patch_embeds\.[1-9]\d*\.projection|'
                         r'stages\.\d+\.\d+\.attn\.sr)$')


@WEIGHT_INITIALIZERS.register_module(name='GreenMIMTwinsInit')
class GreenMIMTwinsInit(BaseInit):
    """``init_cfg=dict(type='mmum.GreenMIMTwinsInit')`` on a ``GreenTwins``
    (or ``SVT``): the released GreenMIM Twins initialisation (module
    docstring). Modules other than Linear / LayerNorm / Conv2d (none in
    SVT) are left alone."""

    def __call__(self, module: nn.Module) -> None:
        for name, m in module.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d) and SPARSE_CONV.search(name):
                m.reset_parameters()  # spconv's init = PyTorch's default
            elif isinstance(m, nn.Conv2d):
                w = m.weight.data
                nn.init.xavier_uniform_(w.view(w.shape[0], -1))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self) -> str:
        return (f'{self.__class__.__name__}: Xavier-uniform Linear and dense '
                'Conv2d (as (out, fan_in)), zero biases, LayerNorm 1/0, '
                "sparse convs PyTorch's default")


__all__ = ['GreenMIMTwinsInit']

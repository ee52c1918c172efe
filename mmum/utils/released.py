"""Reading the released research checkpoints (UM-MAE, GreenMIM, LocalMIM /
ViTFreeze) in the importers of ``tools/model_converters/``."""
from typing import Dict, Tuple

import torch

# timm block parameter names -> mmpretrain's, per released block
# timm ``Block`` (ViT encoder, MAE decoder) -> ``TransformerEncoderLayer``
TIMM_VIT_BLOCK = {
    'norm1': 'ln1', 'norm2': 'ln2', 'attn.qkv': 'attn.qkv',
    'attn.proj': 'attn.proj', 'mlp.fc1': 'ffn.layers.0.0',
    'mlp.fc2': 'ffn.layers.1'
}
# timm-style ``SwinTransformerBlock`` -> mmpretrain's ``SwinBlock``
TIMM_SWIN_BLOCK = {
    'norm1': 'norm1', 'norm2': 'norm2', 'attn.qkv': 'attn.w_msa.qkv',
    'attn.proj': 'attn.w_msa.proj', 'mlp.fc1': 'ffn.layers.0.0',
    'mlp.fc2': 'ffn.layers.1'
}


def load_released(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state dict, whole checkpoint)`` of a released checkpoint.

    The releases save ``{'model': state_dict, ...}`` (MAE-style training
    scripts), ``{'state_dict': ...}`` or the bare state dict. They pickle
    ``argparse.Namespace`` and numpy objects, so the file is read with
    ``weights_only=False``: import only checkpoints you trust.
    """
    from mmum.engine.checkpoint import read_checkpoint  # names bad files
    ckpt = read_checkpoint(path, map_location='cpu', weights_only=False)
    for key in ('model', 'state_dict'):
        if isinstance(ckpt, dict) and key in ckpt:
            return ckpt[key], ckpt
    return ckpt, {}

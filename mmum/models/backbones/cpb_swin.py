from mmpretrain.models import SwinTransformer

from mmum.models.layers.conv_patch_merging import ConvPatchMerging
from mmum.models.layers.cpb_window_attention import CPBShiftWindowMSA
from mmum.models.pretrained import use_strict_pretrained
from mmum.registry import MODELS
from .pretrained_keys import check_pretrained_keys, upgrade_old_swin_keys


@MODELS.register_module()
class CPBSwinTransformer(SwinTransformer):
    """Swin Transformer (v1) with a continuous, MLP-generated relative
    position bias (UM-MAE appendix B.1).

    Everything but the attention bias is mmpretrain's ``SwinTransformer``
    (patch embedding, blocks, patch merging, ``out_indices``, ``frozen_stages``,
    ``get_layer_depth``), so the parameter names match it except that each
    ``attn.w_msa.relative_position_bias_table`` becomes ``attn.w_msa.cpb.*``.
    The bias is defined for any window size, so ``window_size`` may differ
    between pre-training and fine-tuning. With ``pad_small_map=False`` a
    stage whose map is smaller than the window clamps the window to the map.

    The defaults give mmpretrain's layout (an option). mmum's UM-MAE,
    SimMIM-Swin, fine-tuning, mmdet and mmseg configs use the released
    UM-MAE layout: ``patch_merging='conv'``, ``cpb_hidden_dims`` 32 (Tiny) /
    64 (Large) and the release's LayerNorm eps: 1e-6 through ``norm_cfg``,
    ``patch_cfg`` and ``stage_cfgs.downsample_cfg``, 1e-5 (PyTorch's
    default, as the released blocks) through ``stage_cfgs.block_cfgs``.

    Args:
        cpb_hidden_dims (int): Width of the bias MLP. Defaults to 256.
        patch_merging (str): ``'linear'`` (mmpretrain's ``PatchMerging``) or
            ``'conv'`` (:class:`ConvPatchMerging`, the layout of the official
            UM-MAE release, needed to import its weights). Defaults to
            ``'linear'``.
        **kwargs: Arguments of mmpretrain's ``SwinTransformer``.
    """

    def __init__(self, *args, cpb_hidden_dims: int = 256,
                 patch_merging: str = 'linear', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # init_cfg type='Pretrained': mmum's strict version (pretrained.py)
        self.init_cfg = use_strict_pretrained(self.init_cfg)
        self.use_cpb_parts(cpb_hidden_dims, patch_merging)

    def use_cpb_parts(self, cpb_hidden_dims: int, patch_merging: str) -> None:
        """Swap in the CPB attention of width ``cpb_hidden_dims`` and, for
        ``patch_merging='conv'``, :class:`ConvPatchMerging` (its LayerNorm
        keeps the eps of the stage's ``downsample_cfg``)."""
        if patch_merging not in ('linear', 'conv'):
            raise ValueError(f"patch_merging must be 'linear' or 'conv', got "
                             f'{patch_merging!r}')
        if patch_merging == 'conv':
            for stage in self.stages:
                if stage.downsample is not None and not isinstance(
                        stage.downsample, ConvPatchMerging):
                    old = stage.downsample
                    stage.downsample = ConvPatchMerging(
                        old.in_channels, old.out_channels, old.norm.eps)
        for stage in self.stages:
            for block in stage.blocks:
                old = block.attn
                block.attn = CPBShiftWindowMSA(
                    embed_dims=old.w_msa.qkv.in_features,
                    num_heads=old.w_msa.num_heads,
                    window_size=old.window_size,
                    shift_size=old.shift_size,
                    pad_small_map=old.pad_small_map,
                    cpb_hidden_dims=cpb_hidden_dims)
                block.attn.drop = old.drop  # keep the DropPath schedule
        # the bias tables of windows that the built image size clamps to a
        # small map, made now (as buffers) so no forward has to add them
        size = self.patch_embed.init_out_size
        for i, stage in enumerate(self.stages):
            side = min(size) // 2**i if size else None
            for block in stage.blocks:
                attn = block.attn
                if side and side <= attn.window_size and \
                        not attn.pad_small_map:
                    attn.w_msa.cpb.tables(side)
        # frozen_stages: freeze at build, not only in train() (mmpretrain),
        # which the Runner calls after DDP has recorded the parameters that
        # need gradients (DDP would then wait for the frozen ones)
        self._freeze_stages()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # resize an absolute position embedding first (mmpretrain's pre-hook,
        # which super() runs only after our key check), then drop a
        # pre-training mask_token silently and refuse other architectures
        # with a readable error (see pretrained_keys.py)
        if self.use_abs_pos_embed:
            self._prepare_abs_pos_embed(state_dict, prefix)
        upgrade_old_swin_keys(self, state_dict, prefix)  # v1 (mmcls 0.x)
        check_pretrained_keys(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """mmpretrain's layer ids, plus: a pre-training ``mask_token`` is
        part of the stem (layer 0), and every parameter of a stage's
        ``downsample`` (also the ``'conv'`` merging) belongs to the stage's
        last layer."""
        num_layers = sum(self.depths) + 2
        if param_name.startswith(prefix):
            parts = param_name[len(prefix):].split('.')
            if parts[0] == 'mask_token':
                return 0, num_layers
            if parts[0] == 'stages' and parts[2] == 'downsample':
                return sum(self.depths[:int(parts[1]) + 1]), num_layers
        return super().get_layer_depth(param_name, prefix)

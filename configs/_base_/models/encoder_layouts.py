# Encoder layouts shared by the pre-training, fine-tuning and dense-task
# configs. A config starts its backbone from one and adds what is its own:
#   backbone=dict(_base_.um_mae_swin_layout, type=..., arch=..., img_size=...)

# UM-MAE's released Swin layout (implus/UM-MAE `mae_swin_*`): patch merging
# = LayerNorm over C + 2x2 stride-2 conv, a 32-wide bias MLP (64 for the
# released Swin-L). LayerNorm eps as released: 1e-6 in the patch embedding,
# the patch merging and the output norms (the models' `norm_layer`), 1e-5
# (PyTorch's default) in the blocks' norm1 / norm2, which the release builds
# without passing `norm_layer`. mmpretrain's layout (LayerNorm over 4C +
# linear merging, 256-wide MLP, eps 1e-5) is the classes' default.
ln = dict(type='LN', eps=1e-6)
block_ln = dict(type='LN', eps=1e-5)
um_mae_swin_layout = dict(
    patch_merging='conv',
    cpb_hidden_dims=32,
    norm_cfg=ln,
    patch_cfg=dict(norm_cfg=ln),
    stage_cfgs=dict(block_cfgs=dict(norm_cfg=block_ln), downsample_cfg=dict(
        norm_cfg=ln)))

# PVT-S with the key/value pooling {8, 4, 2, 1} of PVT's classification and
# dense-task models (UM-MAE's compact pre-training input pools {4, 2, 1, 1}).
# LayerNorm eps as released (`mae_pvt_small_256`): 1e-6 in the output norms,
# 1e-5 in the blocks' norm1 / norm2 and the key/value norm.
pvt_s_layout = dict(
    arch='small', sr_ratios=(8, 4, 2, 1), norm_cfg=ln, block_norm_cfg=block_ln)

# Twins-L (SVT-L) in Twins' classification layout: one norm after the last
# stage (the encoder output a decoder reads, as MAE's final norm), with the
# released GreenMIM Twins-L's query/key/value biases and LayerNorm eps 1e-6
# (mmpretrain's SVT keeps eps 1e-5 in its patch-embedding norms; GreenTwins
# applies norm_cfg there too). GreenMIM Twins weights are plain SVT weights
# in it.
twins_l_layout = dict(
    arch='large', norm_after_stage=[False, False, False, True],
    qkv_bias=True, norm_cfg=ln)

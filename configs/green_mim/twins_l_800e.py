# GreenMIM, Twins-L (SVT-L), 800 epochs on ImageNet-1K at 224 px (Huang et
# al. 2022, Table 2 "Ours, Twins-L", §4.1 recipe as for Swin): batch 2048 =
# 8 GPUs x 256, AdamW blr 1.5e-4 x batch / 256, betas (0.9, 0.999), wd 0.05,
# 40 warm-up epochs, cosine, AMP; 32-px batch-wise masks (ratio 0.75), a
# one-block 512-d decoder and the normalised-pixel loss.
#   tools/dist_train.sh configs/green_mim/twins_l_800e.py 8
# The encoder runs on the visible tokens only: group window attention for
# the locally-grouped attention, sparse convolutions for the patch
# embeddings, the spatial reduction of the global attention and the PEG.
# Its weights are plain mmpretrain SVT weights (same `norm_after_stage`).
_base_ = './swin_b_800e.py'

# As the released `green_mim_twins_large_patch4_dec512b1`: qkv biases and
# LayerNorm eps 1e-6 (twins_l_layout), its initialisation, and its position
# encoding generator without the residual (the depth-wise convolution alone;
# Twins / SVT add the input back): see docs/green_mim.md for the choice.
# Released Twins-L checkpoints, imported with
# tools/model_converters/green_mim_official_to_mmum.py, load strictly into
# this config and compute the released encoder.
model = dict(
    backbone=dict(
        _base_.twins_l_layout, _delete_=True, type='mmum.GreenTwins',
        drop_path_rate=0.0,
        peg_residual=False,
        init_cfg=dict(type='mmum.GreenMIMTwinsInit')),
    neck=dict(embed_dim=1024))  # Twins-L stage-4 width

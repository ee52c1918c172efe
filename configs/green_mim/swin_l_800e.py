# GreenMIM, Swin-L with 14x14 windows, 800 epochs on ImageNet-1K at 224 px
# (Huang et al. 2022, Table 2 / scripts of the paper), batch 2048:
#   tools/dist_train.sh configs/green_mim/swin_l_800e.py 8
# Stage 4 (7x7) fits in one 14x14 window; mmpretrain's SwinTransformer loads
# the weights strictly, and fine-tuning at window 7 resizes the bias tables.
_base_ = './swin_b_800e.py'

model = dict(
    backbone=dict(arch='large', window_size=14),
    neck=dict(embed_dim=1536))  # Swin-L stage-4 width

# Watching the run (k-NN accuracy, reconstructions): the commented-out hooks
# at the end of configs/_base_/default_runtime.py.

# Backbones of the UM-MAE dense-task configs (mmdet / mmseg): the
# pre-training architecture (./encoder_layouts.py) at the task's resolution,
# all four stages out, drop path 0.1. Swin uses 7x7 windows with the
# small maps padded (the continuous position bias takes any window size);
# PVT-S resizes its sin-cos table to `img_size`. A config adds `arch`,
# `img_size` and the `init_cfg` of its checkpoint:
#   backbone=dict(_base_.um_mae_swin_dense, _delete_=True, arch=..., ...)
# frozen_stages=k here freezes the stem and stages 0..k (mmpretrain's
# meaning); mmdet's / mmseg's Swin freeze 0..k-1 for the same k: subtract one
# from a value copied from an mmdet config (docs/own_config.md).
# out_indices: output (and build the output norm of) only the stages the
# neck reads, or DDP stops on the unused norm (GFL: stages 1-3).
_base_ = './encoder_layouts.py'

um_mae_swin_dense = dict(
    _base_.um_mae_swin_layout,
    type='mmum.CPBSwinTransformer',
    window_size=7,
    pad_small_map=True,
    drop_path_rate=0.1,
    out_indices=(0, 1, 2, 3))
um_mae_pvt_s_dense = dict(
    _base_.pvt_s_layout,
    type='mmum.PVT',
    drop_path_rate=0.1,
    out_indices=(0, 1, 2, 3))

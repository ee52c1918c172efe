# GFL on COCO with the UM-MAE PVT-S: the recipe of
# gfl_um_mae_swin_t_fpn_lsj-25e_coco.py with mmum.PVT (key/value pooling
# {8, 4, 2, 1}, sin-cos table resized to the 1024² input).
#   tools/dist_train.sh configs/mmdet/gfl_um_mae_pvt_s_fpn_lsj-25e_coco.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/um_mae_pvt_s_100e/epoch_100.pth
_base_ = './gfl_um_mae_swin_t_fpn_lsj-25e_coco.py'

pretrained = 'work_dirs/um_mae_pvt_s_100e/epoch_100.pth'

model = dict(
    backbone=dict(
        _base_.um_mae_pvt_s_dense, _delete_=True, img_size=1024,
        out_indices=(1, 2, 3),  # what GFL's FPN reads (see the Swin-T one)
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[128, 320, 512]))

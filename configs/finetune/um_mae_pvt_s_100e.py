# Intermediate fine-tuning on ImageNet-1K of a UM-MAE PVT-S: the Swin-T
# recipe (UM-MAE Table 8: layer decay 0.85, drop path 0.1) with mmum.PVT
# (key/value pooling {8, 4, 2, 1}, sin-cos table resized to 256 px).
#   tools/dist_train.sh configs/finetune/um_mae_pvt_s_100e.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN.pth
_base_ = './um_mae_swin_t_100e.py'

pretrained = 'work_dirs/um_mae_pvt_s_200e/epoch_200.pth'

model = dict(
    backbone=dict(
        _base_.pvt_s_layout, _delete_=True, type='mmum.PVT', img_size=256,
        drop_path_rate=0.1, out_indices=(3, ),
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    head=dict(in_channels=512))

# UperNet on ADE20K with the UM-MAE PVT-S: the recipe of
# upernet_um_mae_swin_t_8xb2-160k_ade20k-512x512.py with mmum.PVT
# (key/value pooling {8, 4, 2, 1}, sin-cos table resized to 512²).
#   tools/dist_train.sh configs/mmseg/upernet_um_mae_pvt_s_8xb2-160k_ade20k-512x512.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/um_mae_pvt_s_100e/epoch_100.pth
_base_ = './upernet_um_mae_swin_t_8xb2-160k_ade20k-512x512.py'

pretrained = 'work_dirs/um_mae_pvt_s_100e/epoch_100.pth'

model = dict(
    backbone=dict(
        _base_.um_mae_pvt_s_dense, _delete_=True, img_size=512,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))

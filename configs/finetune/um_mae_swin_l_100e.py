# Intermediate fine-tuning on ImageNet-1K of the UM-MAE Swin-L (800-epoch
# pre-training, UM-MAE Tables 4, 8): layer decay 0.7, drop path 0.2; the
# rest as configs/finetune/um_mae_swin_t_100e.py.
#   tools/dist_train.sh configs/finetune/um_mae_swin_l_100e.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN.pth
_base_ = './um_mae_swin_t_100e.py'

pretrained = 'work_dirs/um_mae_swin_l_800e/epoch_800.pth'

model = dict(
    backbone=dict(
        arch='large',
        cpb_hidden_dims=64,  # as the released Swin-L pre-training
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint=pretrained)),
    head=dict(in_channels=1536))

optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.7))

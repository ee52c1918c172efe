# ImageNet-1K fine-tuning of a GreenMIM Swin-L (§4.1): layer decay 0.8,
# drop path 0.3, the rest as configs/finetune/green_mim_swin_b_100e.py.
# Pre-trained with 14x14 windows, fine-tuned with 7x7 (GreenMIM Table 1):
# mmpretrain's SwinTransformer resizes the relative position bias tables when
# it loads the checkpoint.
#   tools/dist_train.sh configs/finetune/green_mim_swin_l_100e.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN.pth
_base_ = './green_mim_swin_b_100e.py'

pretrained = 'work_dirs/green_mim_swin_l_800e/epoch_800.pth'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint=pretrained)),
    head=dict(in_channels=1536))

optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.8))

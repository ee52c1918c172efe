# Mask R-CNN + FPN on COCO with the GreenMIM Twins-L: the supervised Swin
# recipe of configs/mmdet/mask-rcnn_green_mim_swin_b_fpn_1x_coco.py with
# mmpretrain's SVT-L as the backbone. GreenMIM Twins weights are plain SVT
# weights (same `norm_after_stage`, so they load strictly) taken from the
# pre-training or fine-tuning checkpoint by their `backbone.` prefix. SVT's
# PEG adds its input back and its patch-embedding norms keep eps 1e-5, where
# the GreenMIM Twins-L pre-training (as released) has no PEG residual: the
# detector starts from the weights, not from the pre-trained function
# (docs/green_mim.md).
#   tools/dist_train.sh configs/mmdet/mask-rcnn_green_mim_twins_l_fpn_1x_coco.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/twins_l_800e/epoch_800.pth
_base_ = './mask-rcnn_green_mim_swin_b_fpn_1x_coco.py'

pretrained = 'work_dirs/twins_l_800e/epoch_800.pth'

model = dict(
    backbone=dict(
        _base_.twins_l_layout, _delete_=True, type='mmpretrain.SVT',
        drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
        # mmum's strict Pretrained: refuses a checkpoint that leaves
        # backbone weights random
        init_cfg=dict(
            type='Pretrained', _scope_='mmum', checkpoint=pretrained,
            prefix='backbone.')),
    neck=dict(in_channels=[128, 256, 512, 1024]))

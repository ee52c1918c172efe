# Mask R-CNN + FPN on COCO with the GreenMIM Swin-B (GreenMIM §4.4): the
# supervised Swin recipe unchanged (AdamW lr 1e-4, wd 0.05, batch 16 =
# 8 GPUs x 2, 1x = 12 epochs with steps at 8 and 11). GreenMIM weights are
# plain mmpretrain SwinTransformer weights, loaded from the pre-training (or
# ImageNet fine-tuning) checkpoint by their `backbone.` prefix:
#   tools/dist_train.sh configs/mmdet/mask-rcnn_green_mim_swin_b_fpn_1x_coco.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/green_mim_swin_b_800e/epoch_800.pth
# mmpretrain's SwinTransformer counts frozen_stages as mmpretrain does
# (stem + stages 0..k), one stage more than mmdet's Swin for the same k
# (docs/own_config.md).
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    '../_base_/models/encoder_layouts.py',
    '../_base_/schedules/dense_adamw.py',
]

pretrained = 'work_dirs/green_mim_swin_b_800e/epoch_800.pth'
# the LayerNorm eps GreenMIM was pre-trained with (every encoder norm), so the
# encoder computes what it was trained as
ln = dict(type='LN', eps=1e-6)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.SwinTransformer',
        arch='base',
        img_size=224,
        window_size=7,
        pad_small_map=True,
        drop_path_rate=0.3,
        norm_cfg=ln,
        patch_cfg=dict(norm_cfg=ln),
        stage_cfgs=dict(
            block_cfgs=dict(norm_cfg=ln), downsample_cfg=dict(norm_cfg=ln)),
        out_indices=(0, 1, 2, 3),
        # _scope_='mmum': mmum's strict Pretrained (mmum/models/pretrained.py)
        # refuses a checkpoint that leaves backbone weights random
        init_cfg=dict(
            type='Pretrained', _scope_='mmum', checkpoint=pretrained,
            prefix='backbone.')),
    neck=dict(in_channels=[128, 256, 512, 1024]))

train_dataloader = dict(batch_size=2)

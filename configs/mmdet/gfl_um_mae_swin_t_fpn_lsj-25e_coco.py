# GFL on COCO with the UM-MAE Swin-T (UM-MAE §4, appendix B.3): 1024²
# training with large-scale jitter (scale 0.1-2.0, then a 1024² crop), AdamW
# lr 1e-4, wd 0.05, 25-epoch cosine schedule, batch 16 = 8 GPUs x 2; the
# rest is mmdet's GFL (ATSS assignment, QFL + DFL + GIoU, GN in the head).
# Start from the intermediate ImageNet fine-tuning checkpoint (or from the
# pre-training checkpoint itself); both keep the `backbone.` prefix:
#   tools/dist_train.sh configs/mmdet/gfl_um_mae_swin_t_fpn_lsj-25e_coco.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/um_mae_swin_t_100e/epoch_100.pth
# frozen_stages=k (if you add it) freezes the stem and stages 0..k, one
# stage more than mmdet's / mmseg's Swin for the same k (docs/own_config.md).
_base_ = [
    'mmdet::gfl/gfl_r50_fpn_1x_coco.py',
    '../_base_/models/um_mae_dense_backbones.py',
    '../_base_/schedules/dense_adamw.py',
]

pretrained = 'work_dirs/um_mae_swin_t_100e/epoch_100.pth'
image_size = (1024, 1024)
max_epochs = 25

model = dict(
    # the pre-training architecture (released UM-MAE layout)
    backbone=dict(
        _base_.um_mae_swin_dense, _delete_=True, arch='tiny', img_size=1024,
        out_indices=(1, 2, 3),
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    # GFL's FPN reads strides 8-32 (mmdet's start_level=1 of 4 maps): the
    # backbone outputs (and builds output norms for) only stages 1-3, so
    # every parameter gets a gradient (DDP needs that; an unread stage-0
    # norm stops it after one iteration). Same FPN parameters as before.
    neck=dict(in_channels=[192, 384, 768], start_level=0))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='RandomResize',
        scale=image_size,
        ratio_range=(0.1, 2.0),
        keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_type='absolute_range',
        crop_size=image_size,
        recompute_bbox=True,
        allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
# mmdet's test pipeline at the 1024² scale
test_pipeline = [
    _base_.val_dataloader.dataset.pipeline[0],
    dict(type='Resize', scale=image_size, keep_ratio=True),
    *_base_.val_dataloader.dataset.pipeline[2:],
]
train_dataloader = dict(
    batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(_base_.dense_adamw, _delete_=True)

param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=500),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min=0.0,
        by_epoch=True,
        begin=0,
        end=max_epochs,
        convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(enable=False, base_batch_size=16)

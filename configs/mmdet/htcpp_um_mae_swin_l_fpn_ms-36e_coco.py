# HTC++ on COCO with the UM-MAE Swin-L (UM-MAE §4.2, Table 5: 36 epochs,
# after 800 pre-training and 100 intermediate ImageNet epochs).
#
# What "++" means (Swin Transformer paper, §4.2; UM-MAE uses the same
# framework) and what this config includes:
#   * Hybrid Task Cascade with its semantic branch (FusedSemanticHead trained
#     on COCO-stuff maps: data/coco/stuffthingmaps/train2017/*.png)   [yes]
#   * 4conv1fc box heads with norm layers (SyncBN) and GIoU loss in all
#     three cascade stages                                              [yes]
#   * stronger multi-scale training: shorter side 400-1400, longer <= 1600
#                                                                       [yes]
#   * soft-NMS at test time (mmcv op)                                   [yes]
#   * AdamW lr 1e-4, wd 0.05, batch 16; 36 epochs (3x, steps at 27, 33)
#     instead of the 72 epochs (6x) of the supervised baseline          [yes]
#   * InstaBoost copy-paste augmentation: needs the optional package
#     `instaboostfast` (pip install instaboostfast); it is switched on in
#     htcpp_um_mae_swin_l_fpn_ms-instaboost-36e_coco.py                [optional]
#   * an extra global self-attention block after the last stage (Swin's
#     HTC++ only; not part of the backbone whose weights UM-MAE transfers)
#                                                                        [no]
#   * multi-scale + flip testing: mmdet's DetTTAModel can be added with
#     tools/test.py --tta-style configs; not configured here             [no]
# SyncBN needs distributed GPU training; for one process / CPU override it:
#   --cfg-options model.roi_head.bbox_head.0.norm_cfg.type=BN ... (or GN)
#
#   tools/dist_train.sh configs/mmdet/htcpp_um_mae_swin_l_fpn_ms-36e_coco.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/um_mae_swin_l_100e/epoch_100.pth
# frozen_stages=k (if you add it) freezes the stem and stages 0..k, one
# stage more than mmdet's / mmseg's Swin for the same k (docs/own_config.md).
_base_ = [
    'mmdet::htc/htc_r50_fpn_1x_coco.py',
    '../_base_/models/um_mae_dense_backbones.py',
    '../_base_/schedules/dense_adamw.py',
]

pretrained = 'work_dirs/um_mae_swin_l_100e/epoch_100.pth'
max_epochs = 36
head_norm_cfg = dict(type='SyncBN', requires_grad=True)


def cascade_bbox_head(stds):
    return dict(
        type='ConvFCBBoxHead',
        num_shared_convs=4,
        num_shared_fcs=1,
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0., 0., 0., 0.],
            target_stds=stds),
        reg_class_agnostic=False,
        reg_decoded_bbox=True,
        norm_cfg=head_norm_cfg,
        loss_cls=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


model = dict(
    # the pre-training architecture (released UM-MAE Swin-L layout, with its
    # 64-wide bias MLP)
    backbone=dict(
        _base_.um_mae_swin_dense, _delete_=True, arch='large', img_size=1024,
        drop_path_rate=0.2, cpb_hidden_dims=64,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[192, 384, 768, 1536]),
    roi_head=dict(bbox_head=[
        cascade_bbox_head([0.1, 0.1, 0.2, 0.2]),
        cascade_bbox_head([0.05, 0.05, 0.1, 0.1]),
        cascade_bbox_head([0.033, 0.033, 0.067, 0.067]),
    ]),
    test_cfg=dict(
        rcnn=dict(nms=dict(type='soft_nms', iou_threshold=0.5,
                           min_score=0.05))))
del cascade_bbox_head

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(
        type='LoadAnnotations', with_bbox=True, with_mask=True,
        with_seg=True),
    dict(
        type='RandomResize',
        scale=[(1600, 400), (1600, 1400)],
        keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
# mmdet's test pipeline at the larger scale
test_pipeline = [
    _base_.val_dataloader.dataset.pipeline[0],
    dict(type='Resize', scale=(1600, 1400), keep_ratio=True),
    *_base_.val_dataloader.dataset.pipeline[2:],
]
train_dataloader = dict(
    batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(_base_.dense_adamw, _delete_=True)

param_scheduler = _base_.det_3x_steps
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(enable=False, base_batch_size=16)

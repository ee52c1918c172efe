# Mask R-CNN + FPN on COCO with the GreenMIM Swin-B, 3x schedule (36 epochs,
# steps at 27 and 33) with the multi-scale + random-crop augmentation of the
# supervised Swin recipe (GreenMIM §4.4, Table 3; mmdet's
# swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py).
#   tools/dist_train.sh configs/mmdet/mask-rcnn_green_mim_swin_b_fpn_ms-crop-3x_coco.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/green_mim_swin_b_800e/epoch_800.pth
_base_ = './mask-rcnn_green_mim_swin_b_fpn_1x_coco.py'

max_epochs = 36
scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333),
          (640, 1333), (672, 1333), (704, 1333), (736, 1333), (768, 1333),
          (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[[
            dict(type='RandomChoiceResize', scales=scales, keep_ratio=True)
        ],
                    [
                        dict(
                            type='RandomChoiceResize',
                            scales=[(400, 1333), (500, 1333), (600, 1333)],
                            keep_ratio=True),
                        dict(
                            type='RandomCrop',
                            crop_type='absolute_range',
                            crop_size=(384, 600),
                            allow_negative_crop=True),
                        dict(
                            type='RandomChoiceResize',
                            scales=scales,
                            keep_ratio=True)
                    ]]),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

train_cfg = dict(max_epochs=max_epochs)
param_scheduler = _base_.det_3x_steps

# SimMIM baseline of UM-MAE's Table 3: Swin-T (window 8, the same CPB
# architecture as UM-MAE, in its released layout) at the same 256 px and
# with the same schedule as configs/um_mae/swin_t_200e.py. The encoder sees
# the whole image with 75% of its 16-px patches replaced by a mask token
# (random, as MAE samples).
#   tools/dist_train.sh configs/simmim/swin_t_256_200e.py 8
_base_ = [
    '../_base_/models/encoder_layouts.py',
    '../_base_/datasets/imagenet_bs128_um_mae_256.py',
    '../_base_/schedules/um_mae_adamw_coslr.py',
    '../_base_/default_runtime.py',
]

# UM-MAE's crop and flip, then SimMIM's masks
train_pipeline = [
    *_base_.train_pipeline[:3],
    dict(
        type='SimMIMMaskGenerator',
        input_size=256,
        mask_patch_size=16,
        model_patch_size=4,
        mask_ratio=0.75),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
# SimMIM's masks (not uniform): moved in one piece, without the UM-MAE check
data_preprocessor = dict(type='mmum.MaskedDataPreprocessor')

model = dict(
    type='mmpretrain.SimMIM',
    # the masks move in one piece, from pinned memory, without blocking
    data_preprocessor=dict(
        type='mmum.MaskedDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True),
    backbone=dict(
        # UM-MAE's (released) Swin layout, windows of 8
        _base_.um_mae_swin_layout,
        type='mmum.SimMIMCPBSwinTransformer',
        arch='tiny',
        img_size=256,
        drop_path_rate=0.0,
        stage_cfgs=dict(
            block_cfgs=dict(window_size=8, norm_cfg=_base_.block_ln),
            downsample_cfg=dict(norm_cfg=_base_.ln))),
    neck=dict(type='SimMIMLinearDecoder', in_channels=768, encoder_stride=32),
    head=dict(
        type='SimMIMHead',
        patch_size=4,
        loss=dict(type='PixelReconstructionLoss', criterion='L1', channel=3)))

default_hooks = dict(logger=dict(type='LoggerHook', interval=50))

# SimMIM baseline of GreenMIM's Twins-L (Huang et al. 2022, App. A.1): the
# whole 224-px image with 75 % of its 32-px units replaced by a mask token
# after the first (stride-4) patch embedding, SimMIM's linear decoder and L1
# loss on the masked pixels; the same optimiser, schedule and batch as
# configs/green_mim/twins_l_800e.py, so only the method differs.
#   tools/dist_train.sh configs/simmim/twins_l_224_800e.py 8
_base_ = '../green_mim/twins_l_800e.py'

# MAE's crop and flip, then SimMIM's masks
train_pipeline = [
    *_base_.train_dataloader.dataset.pipeline[:3],
    dict(
        type='SimMIMMaskGenerator',
        input_size=224,
        mask_patch_size=32,
        model_patch_size=4,
        mask_ratio=0.75),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    dataset=dict(pipeline=train_pipeline),
    pin_memory=True,
    collate_fn=dict(type='default_collate'))
data_preprocessor = dict(type='mmum.MaskedDataPreprocessor')

model = dict(
    _delete_=True,
    type='mmpretrain.SimMIM',
    # the masks move in one piece, from pinned memory, without blocking
    data_preprocessor=dict(
        type='mmum.MaskedDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True),
    backbone=dict(
        # GreenMIM Twins-L's architecture, its PEG without residual included
        _base_.twins_l_layout, type='mmum.SimMIMSVT', drop_path_rate=0.0,
        peg_residual=False),
    neck=dict(
        type='mmpretrain.SimMIMLinearDecoder',
        in_channels=1024,
        encoder_stride=32),
    head=dict(
        type='mmpretrain.SimMIMHead',
        patch_size=4,
        loss=dict(
            type='mmpretrain.PixelReconstructionLoss',
            criterion='L1',
            channel=3)))

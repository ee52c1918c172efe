# configs/vitfreeze/vit_b_100e.py shrunk to a few CPU iterations: a 4-block
# ViT on 64² images (16-px patches: 4x4 grid, targets at 16², 8², 4², 2²),
# FreezeOut over 12 iterations. Point ``train_dataloader.dataset.data_root``
# at an ImageNet-layout folder (tests/_tiny_runs.py::make_imagenet_folder).
_base_ = ['../../configs/vitfreeze/vit_b_100e.py']

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=32, num_layers=4, num_heads=2,
                  feedforward_channels=64),
        img_size=64,
        out_indices=(0, 1, 2, 3)),
    neck=dict(embed_dims=16, num_heads=2))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.2, 1.0),
         backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackInputs')
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root='data/tiny', pipeline=train_pipeline))

optim_wrapper = dict(type='OptimWrapper', _delete_=True,
                     optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                     constructor='mmpretrain.'
                     'LearningRateDecayOptimWrapperConstructor',
                     paramwise_cfg=dict(layer_decay_rate=1.0))
# 5 encoder layers freeze at iterations 6, 7.5, 9, 10.5 and never
param_scheduler = [
    dict(type='mmum.FreezeOutLR', t_0=0.5, spacing='linear', warmup=2,
         by_epoch=False, begin=0, end=12)
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=12)
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=2, max_keep_ckpts=-1),
    logger=dict(interval=1))
log_processor = dict(by_epoch=False)

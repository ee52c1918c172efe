# Uniform Masking on a vanilla ViT-B/16, 200 epochs at 224 px: the pilot of
# paper §4.1 / Table 1, in mmpretrain's MAE with the encoder's sampling
# switched by `sampling` ('RS' = MAE, 'GS', 'US', 'UM') and, for UM, the
# secondary masking ratio (0.15 / 0.25 / 0.35 in Table 1).
#   tools/dist_train.sh configs/um_mae/vit_b_200e.py 8
_base_ = 'mmpretrain::mae/mae_vit-base-p16_8xb512-amp-coslr-300e_in1k.py'

custom_imports = dict(imports=['mmum'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='mmum.UMViT',
        sampling='UM',
        secondary_ratio=0.25))

# the images move from pinned memory without blocking (UMViT draws its masks
# on the device)
data_preprocessor = dict(type='mmum.MaskedDataPreprocessor')

# 8 GPUs x 128 images x 4 accumulation steps = 4096 (paper Table 8); one
# param group per set of equal options (same updates, faster step)
train_dataloader = dict(
    batch_size=128,
    pin_memory=True,
    collate_fn=dict(_delete_=True, type='default_collate'),
    # any folder of images (labels unused; the ImageNet layout reads
    # meta/train.txt): mmum.ImageFolder. An image that cannot be read is
    # skipped with a warning naming it (docs/own_config.md)
    dataset=dict(
        type='mmum.ImageFolder',
        pipeline=[
            dict(type='mmum.SafeLoadImageFromFile', on_error='skip'),
            *_base_.train_dataloader.dataset.pipeline[1:]
        ]))
optim_wrapper = dict(
    accumulative_counts=4,
    constructor='mmum.MergedGroupsOptimWrapperConstructor')

# mmpretrain's MAE schedule (40 warm-up epochs, cosine) cut to 200 epochs
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=40,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=160, by_epoch=True, begin=40,
         end=200, convert_to_iter_based=True)
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=200)
default_hooks = dict(
    # atomic saving: a kill while saving never breaks the latest checkpoint
    checkpoint=dict(type='mmum.SafeCheckpointHook', interval=1,
                    max_keep_ckpts=3))
# stop with a message on a NaN/inf loss, before it reaches a checkpoint
custom_hooks = [dict(type='mmum.NaNGuardHook')]

# Watching the run (docs/watching.md): uncomment and set the
# ImageNet paths to log a weighted k-NN top-1/top-5 of the encoder (10k
# train / 5k val images) every 10 epochs and to draw
# the reconstructions of 4 val images (<work_dir>/reconstructions and
# the Visualizer backends). This config is built on mmpretrain's MAE config,
# not on configs/_base_/default_runtime.py (whose block the others use).
# custom_hooks += [
#     dict(type='mmum.KNNEvalHook', interval=10,
#          train_dataset=dict(type='ImageNet', data_root='data/imagenet',
#                             split='train'), train_subset=10000,
#          val_dataset=dict(type='ImageNet', data_root='data/imagenet',
#                           split='val'), val_subset=5000),
#     dict(type='mmum.ReconstructionHook', interval=10, num_images=4,
#          dataset=dict(type='ImageNet', data_root='data/imagenet',
#                       split='val')),
# ]

# ViTFreeze on a hierarchical encoder: LocalMIM-HOG with UM-MAE's Swin-T
# (compact input of uniformly masked 256² images), decoders on the 4 stages
# (targets 64², 32², 16², 8²), FreezeOut t_0 = 0.8 cubic over the patch
# embedding and the 12 blocks (a stage's patch merging freezes with its last
# block), 100 epochs with 10 of warm-up. 8 GPUs x 128 images x 4 steps.
_base_ = [
    '../_base_/datasets/imagenet_bs128_um_mae_256.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmum'], allow_failed_imports=False)

model = dict(
    type='mmum.UMLocalMIM',
    patch_size=16,
    backbone=dict(
        type='mmum.LocalMIMSwin',
        arch='tiny',
        img_size=128,  # the compact input
        window_size=8,
        drop_path_rate=0.0,
        out_indices=(0, 1, 2, 3)),
    neck=dict(type='mmum.LocalMIMCompactDecoder', embed_dims=256,
              num_heads=8),
    head=dict(
        type='mmpretrain.MIMHead',
        loss=dict(type='mmpretrain.PixelReconstructionLoss', criterion='L2')),
    target_generator=dict(
        type='mmum.HOGTarget', cell_sizes=(4, 8, 16, 32), nbins=9))

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    accumulative_counts=4,
    optimizer=dict(
        type='AdamW', lr=2e-4 * 4096 / 256, betas=(0.9, 0.95),
        weight_decay=0.05),
    constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=1.0,
        flat_decay_mult=0.0,
        custom_keys={'.mask_token': dict(decay_mult=0.0)}))

param_scheduler = [
    dict(
        type='mmum.FreezeOutLR',
        t_0=0.8,
        spacing='cubic',
        scale_lr=True,
        warmup=10,
        by_epoch=True,
        begin=0,
        end=100,
        convert_to_iter_based=True)
]
custom_hooks = [
    dict(type='mmum.FreezeOutHook'),
    dict(type='mmum.DecoderPruningHook'),
    dict(type='mmum.NaNGuardHook'),  # stop on a NaN/inf loss
]
find_unused_parameters = True

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=100)
default_hooks = dict(
    # atomic saving: a kill while saving never breaks the latest checkpoint
    checkpoint=dict(type='mmum.SafeCheckpointHook', interval=1,
                    max_keep_ckpts=3))
randomness = dict(seed=0, diff_rank_seed=True)
resume = True
auto_scale_lr = dict(base_batch_size=4096)

# Watching the run (README "Watching a run"): uncomment and set the
# ImageNet paths to log a weighted k-NN top-1/top-5 of the encoder (10k
# train / 5k val images) every 10 epochs and to draw
# the reconstructions of 4 val images (<work_dir>/reconstructions and
# the Visualizer backends).
# LocalMIM predicts HOG: the pictures show the HOG of 16-px cells.
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

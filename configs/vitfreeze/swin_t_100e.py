# ViTFreeze on a hierarchical encoder: LocalMIM-HOG with UM-MAE's Swin-T
# (compact input of uniformly masked 256² images), decoders on the 4 stages
# (targets 64², 32², 16², 8²), FreezeOut t_0 = 0.8 cubic over the patch
# embedding and the 12 blocks (a stage's patch merging freezes with its last
# block), 100 epochs with 10 of warm-up. 8 GPUs x 128 images x 4 steps.
_base_ = [
    '../_base_/datasets/imagenet_bs128_um_mae_256.py',
    '../_base_/schedules/adamw_warmup_cosine.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/freezeout.py',
]

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
    accumulative_counts=4,
    optimizer=dict(lr=2e-4 * 4096 / 256),
    constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=1.0,
        flat_decay_mult=0.0,
        custom_keys={'.mask_token': dict(decay_mult=0.0)}))

param_scheduler = [_base_.freezeout_lr]
custom_hooks = _base_.freezeout_hooks + _base_.custom_hooks
find_unused_parameters = True

train_cfg = dict(max_epochs=100)

# Watching the run (k-NN accuracy, HOG reconstructions): the commented-out
# hooks at the end of configs/_base_/default_runtime.py.

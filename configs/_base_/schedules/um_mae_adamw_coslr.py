# AdamW + 10-epoch linear warm-up + cosine, UM-MAE pre-training (Table 8).
# lr = 1.5e-4 x total_batch / 256 with a 4096 total batch.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    accumulative_counts=4,
    optimizer=dict(
        type='AdamW', lr=1.5e-4 * 4096 / 256, betas=(0.9, 0.95),
        weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'mask_token': dict(decay_mult=0.),
            'cpb': dict(decay_mult=0.),
        }))

param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-4,
        by_epoch=True,
        begin=0,
        end=10,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        T_max=190,
        by_epoch=True,
        begin=10,
        end=200,
        convert_to_iter_based=True)
]

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=200)
# 8 GPUs x 128 images x 4 accumulation steps = 4096
auto_scale_lr = dict(base_batch_size=4096)

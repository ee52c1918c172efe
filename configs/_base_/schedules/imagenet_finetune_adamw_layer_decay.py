# ImageNet-1K fine-tuning schedule: AdamW (betas 0.9 / 0.999, wd 0.05) under
# AMP with layer-wise lr decay (parameters at depth d of L get
# lr x rate ** (L - 1 - d); no decay on norms, biases and 1-d parameters),
# linear warm-up then cosine, 100 epochs validated every 10. The defaults
# are UM-MAE's (Table 8: blr 5e-4 x 1024 / 256, decay 0.85, 5 warm-up
# epochs, cosine to 1e-6); a config restates the schedulers from
# `_base_.param_scheduler` and sets its lr and `layer_decay_rate`.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    accumulative_counts=2,
    optimizer=dict(
        type='AdamW',
        lr=5e-4 * 1024 / 256,
        betas=(0.9, 0.999),
        weight_decay=0.05,
        eps=1e-8),
    constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=0.85,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0))

param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        begin=0,
        end=5,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        T_max=95,
        eta_min=1e-6,
        by_epoch=True,
        begin=5,
        end=100,
        convert_to_iter_based=True)
]

train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=10)
val_cfg = dict()
test_cfg = dict()

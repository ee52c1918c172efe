# Pre-training schedule shared by mmum's MIM configs (and the base of
# ./imagenet_finetune_adamw_layer_decay.py): AdamW under AMP, a linear
# warm-up from 1e-4 x the peak lr, then cosine to 0, by epoch (stepped per
# iteration). The defaults are UM-MAE's 200 epochs with 10 of warm-up
# (UM-MAE Table 8); a config changes the epochs by restating the two
# schedulers from `_base_.param_scheduler` (see configs/um_mae/swin_l_800e.py)
# and the lr / betas in `optim_wrapper.optimizer`.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(
        type='AdamW', lr=1.5e-4 * 4096 / 256, betas=(0.9, 0.95),
        weight_decay=0.05))

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
auto_scale_lr = dict(base_batch_size=4096)

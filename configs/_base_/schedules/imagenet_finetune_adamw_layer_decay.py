# ImageNet-1K fine-tuning schedule: ./adamw_warmup_cosine.py with betas
# (0.9, 0.999), eps 1e-8 and layer-wise lr decay (parameters at depth d of L
# get lr x rate ** (L - 1 - d); no decay on norms, biases and 1-d
# parameters), 100 epochs validated every 10. The defaults are UM-MAE's
# (Table 8: blr 5e-4 x 1024 / 256, decay 0.85, 5 warm-up epochs, cosine to
# 1e-6); a config restates the schedulers from `_base_.param_scheduler` and
# sets its lr and `layer_decay_rate`.
_base_ = './adamw_warmup_cosine.py'

optim_wrapper = dict(
    accumulative_counts=2,
    optimizer=dict(lr=5e-4 * 1024 / 256, betas=(0.9, 0.999), eps=1e-8),
    constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=0.85,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0))

param_scheduler = [
    dict(_base_.param_scheduler[0], start_factor=1e-3, end=5),
    dict(_base_.param_scheduler[1], T_max=95, eta_min=1e-6, begin=5,
         end=100),
]

train_cfg = dict(
    _delete_=True, by_epoch=True, max_epochs=100, val_interval=10)
val_cfg = dict()
test_cfg = dict()

# ViTFreeze's schedule (arXiv 2312.02194): FreezeOut with t_0 = 0.8, cubic
# spacing and scaled lrs over 100 epochs with 10 of warm-up, and the hooks
# that freeze layers (eval mode, restored on resume) and prune the decoders
# fed by frozen blocks. A config on ../default_runtime.py takes them as
#   param_scheduler = [_base_.freezeout_lr]
#   custom_hooks = _base_.freezeout_hooks + _base_.custom_hooks
# and sets `find_unused_parameters = True` (frozen parameters stop receiving
# gradients: DDP must not wait for them).
freezeout_lr = dict(
    type='mmum.FreezeOutLR',
    t_0=0.8,
    spacing='cubic',
    scale_lr=True,
    warmup=10,
    by_epoch=True,
    begin=0,
    end=100,
    convert_to_iter_based=True)
freezeout_hooks = [
    dict(type='mmum.FreezeOutHook'),
    dict(type='mmum.DecoderPruningHook'),
]

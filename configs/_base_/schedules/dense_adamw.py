# The optimiser of UM-MAE's dense tasks (appendix B.3 / B.4): AdamW lr 1e-4,
# betas (0.9, 0.999), wd 0.05 with no decay on norms and on the continuous
# position bias MLP, no layer-wise lr decay (Table 7). The mmdet / mmseg
# configs replace their base's optimiser with it:
#   optim_wrapper = dict(_base_.dense_adamw, _delete_=True)
# Every mmdet / mmseg config of mmum takes this file, which also brings
# mmum's registry.
custom_imports = dict(imports=['mmum'], allow_failed_imports=False)

dense_adamw = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'norm': dict(decay_mult=0.),
            '.cpb': dict(decay_mult=0.),
        }))

# mmdet's 3x schedule (36 epochs, x0.1 at 27 and 33) after 1000 linear
# warm-up iterations, as the supervised Swin recipe trains Mask R-CNN / HTC:
#   param_scheduler = _base_.det_3x_steps
det_3x_steps = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=36,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]

# configs/green_mim/swin_b_800e.py shrunk for the reliability tests: a tiny
# Swin (window 4) on 128-px images (4x4 mask units of 32 px), 6 CPU
# iterations, checkpoints every 2, tests/_reliability_probe.py's recorder.
_base_ = '../../configs/green_mim/swin_b_800e.py'
custom_imports = dict(imports=['mmum', '_ddp_probe', '_reliability_probe'],
                      allow_failed_imports=False)

model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=16, depths=(1, 1, 1, 1),
                            num_heads=(1, 1, 2, 2)),
                  img_size=128, window_size=4),
    neck=dict(num_patches=16, embed_dim=128, decoder_embed_dim=32,
              decoder_num_heads=2))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=128, crop_ratio_range=(0.2, 1.0),
         backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='data/tiny',
                                     pipeline=train_pipeline))
optim_wrapper = dict(type='OptimWrapper', _delete_=True,
                     optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.95),
                                    weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=2, end=6),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=6)
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=2, max_keep_ckpts=2),
    logger=dict(interval=1))
custom_hooks = [dict(type='mmum.NaNGuardHook'),
                dict(type='ReliabilityProbeHook'),
                dict(type='MaskProbeHook')]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, diff_rank_seed=True, deterministic=True)
resume = False

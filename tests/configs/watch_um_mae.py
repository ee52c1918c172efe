# configs/um_mae/swin_t_200e.py shrunk for the k-NN / reconstruction hook
# tests: a tiny Swin on 64-px images (compact 32 px), CPU iterations,
# mmum.KNNEvalHook and mmum.ReconstructionHook every 2 iterations. Point the
# data roots at a CustomDataset-layout folder with train/ and val/ (one
# sub-folder per class), e.g. tests/test_knn_eval.py::make_shapes_dataset:
#   --cfg-options train_dataloader.dataset.data_root=D \
#       custom_hooks.0.train_dataset.data_root=D \
#       custom_hooks.0.val_dataset.data_root=D \
#       custom_hooks.1.dataset.data_root=D
_base_ = '../../configs/um_mae/swin_t_200e.py'

model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=16, depths=[1, 1, 1, 1],
                            num_heads=[1, 1, 2, 2]),
                  img_size=32, window_size=4),
    neck=dict(embed_dim=128, num_patches=16, decoder_embed_dim=32,
              decoder_depth=1, decoder_num_heads=2))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.5, 1.0),
         backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='mmum.UniformMasking', patch_size=16, secondary_ratio=0.25),
    dict(type='PackInputs', algorithm_keys=['secondary_mask']),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_delete_=True, type='CustomDataset', data_root='data/knn',
                 data_prefix='train', with_label=False,
                 pipeline=train_pipeline))
optim_wrapper = dict(type='OptimWrapper', _delete_=True,
                     optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.95),
                                    weight_decay=0.05))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4)
default_hooks = dict(
    checkpoint=dict(type='mmum.SafeCheckpointHook', by_epoch=False,
                    interval=2, max_keep_ckpts=3),
    logger=dict(interval=1))
custom_hooks = [
    dict(type='mmum.KNNEvalHook', by_epoch=False, interval=2,
         train_dataset=dict(type='CustomDataset', data_root='data/knn',
                            data_prefix='train'),
         val_dataset=dict(type='CustomDataset', data_root='data/knn',
                          data_prefix='val'),
         img_size=64, batch_size=8, num_workers=0),
    dict(type='mmum.ReconstructionHook', by_epoch=False, interval=2,
         dataset=dict(type='CustomDataset', data_root='data/knn',
                      data_prefix='val'), num_images=3),
]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, diff_rank_seed=True, deterministic=True)
resume = False

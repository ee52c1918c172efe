# LocalMIM-HOG ViT-B/16, 100 epochs, without freezing: the baseline of
# ViTFreeze (arXiv 2312.02194, Table 1). 8 GPUs x 512 images.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs512_mae.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmum'], allow_failed_imports=False)

# mmpretrain's bases get `_scope_` in every dict, which default_collate
# (not built from a registry) would receive as a keyword argument
train_dataloader = dict(collate_fn=dict(_delete_=True, type='default_collate'))

model = dict(
    type='mmum.LocalMIM',
    # decoders on blocks 2, 4, 10, 12; 75% of the patches masked
    backbone=dict(
        type='mmum.LocalMIMViT',
        arch='b',
        patch_size=16,
        mask_ratio=0.75,
        out_indices=(1, 3, 9, 11)),
    # one transformer block (256-d, 8 heads) each, then the released heads:
    # 56²: 2x2 deconv to 128, LN, GELU, 2x2 deconv to 64; 28²: deconv to
    # 128; 14²: none; 7²: 2x2 average pooling; then a 1x1 conv to 27
    neck=dict(type='mmum.LocalMIMDecoder', embed_dims=256, num_heads=8),
    head=dict(
        type='mmpretrain.MIMHead',
        loss=dict(type='mmpretrain.PixelReconstructionLoss', criterion='L2')),
    # HOG targets at 56², 28², 14², 7², taken on the normalised image
    target_generator=dict(
        type='mmum.HOGTarget', cell_sizes=(4, 8, 16, 32), nbins=9),
    init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)
    ])

# one param group per parameter with its `layer_id` (what FreezeOutLR needs);
# layer_decay_rate=1 keeps every lr equal
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(
        type='AdamW', lr=2e-4 * 4096 / 256, betas=(0.9, 0.95),
        weight_decay=0.05),
    constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=1.0,
        flat_decay_mult=0.0,
        custom_keys={
            '.cls_token': dict(decay_mult=0.0),
            '.mask_token': dict(decay_mult=0.0)
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
        T_max=90,
        by_epoch=True,
        begin=10,
        end=100,
        convert_to_iter_based=True)
]

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=100)
default_hooks = dict(
    # atomic saving: a kill while saving never breaks the latest checkpoint
    checkpoint=dict(type='mmum.SafeCheckpointHook', interval=1,
                    max_keep_ckpts=3))
# stop with a message on a NaN/inf loss, before it reaches a checkpoint
custom_hooks = [dict(type='mmum.NaNGuardHook')]
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

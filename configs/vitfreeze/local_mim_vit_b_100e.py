# LocalMIM-HOG ViT-B/16, 100 epochs, without freezing: the baseline of
# ViTFreeze (arXiv 2312.02194, Table 1). 8 GPUs x 512 images.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs512_mae.py',
    '../_base_/schedules/adamw_warmup_cosine.py',
    '../_base_/default_runtime.py',
]

# mmpretrain's bases get `_scope_` in every dict, which default_collate
# (not built from a registry) would receive as a keyword argument
train_dataloader = dict(
    pin_memory=True,
    collate_fn=dict(_delete_=True, type='default_collate'),
    # any folder of images (labels unused; the ImageNet layout reads
    # meta/train.txt): mmum.ImageFolder. An image that cannot be read is
    # skipped with a warning naming it (docs/own_config.md)
    dataset=dict(
        type='mmum.ImageFolder',
        pipeline=[
            dict(type='mmum.SafeLoadImageFromFile', on_error='skip'),
            *_base_.train_dataloader.dataset.pipeline[1:]
        ]))
# the images move from pinned memory without blocking (the masks are drawn
# on the device, in the model)
data_preprocessor = dict(type='mmum.MaskedDataPreprocessor')

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
    optimizer=dict(lr=2e-4 * 4096 / 256),
    constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=1.0,
        flat_decay_mult=0.0,
        custom_keys={
            '.cls_token': dict(decay_mult=0.0),
            '.mask_token': dict(decay_mult=0.0)
        }))

# 10 warm-up epochs, cosine to 0 at epoch 100
param_scheduler = [
    _base_.param_scheduler[0],
    dict(_base_.param_scheduler[1], T_max=90, end=100),
]
train_cfg = dict(max_epochs=100)

# Watching the run (k-NN accuracy, HOG reconstructions): the commented-out
# hooks at the end of configs/_base_/default_runtime.py.

# GreenMIM, Swin-B (window 7), 800 epochs on ImageNet-1K at 224 px
# (Huang et al. 2022, §4.1): batch 2048 = 8 GPUs x 256,
#   tools/dist_train.sh configs/green_mim/swin_b_800e.py 8
_base_ = [
    '../_base_/models/encoder_layouts.py',
    'mmpretrain::_base_/datasets/imagenet_bs512_mae.py',
    '../_base_/schedules/adamw_warmup_cosine.py',
    '../_base_/default_runtime.py',
]

model = dict(
    type='mmum.GreenMIM',
    mask_ratio=0.75,
    mask_unit=32,  # = Swin's total stride: one mask unit per stage-4 token
    backbone=dict(
        type='mmum.GreenSwinTransformer',
        arch='base',
        img_size=224,
        window_size=7,
        drop_path_rate=0.0,
        # as the released GreenMIM: every encoder LayerNorm with eps 1e-6,
        # Linear layers Xavier-uniform, the patch-embedding conv
        # Xavier-uniform as a linear map (fan_out = out channels, its bias
        # left at PyTorch's default), LayerNorm 1 / 0
        norm_cfg=dict(type='LN', eps=1e-6),
        init_cfg=[
            dict(type='Xavier', layer='Linear', distribution='uniform'),
            dict(type='mmum.LinearXavier', layer='Conv2d'),
            dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
        ]),
    neck=dict(
        type='mmum.GreenMIMDecoder',
        num_patches=49,  # (224 / 32) ** 2 mask units
        patch_size=32,
        embed_dim=1024,  # Swin-B stage-4 width
        decoder_embed_dim=512,
        decoder_depth=1,
        decoder_num_heads=16,
        norm_cfg=dict(type='LN', eps=1e-6)),
    head=dict(
        type='mmpretrain.MAEPretrainHead',
        norm_pix=True,
        patch_size=32,
        loss=dict(type='mmpretrain.PixelReconstructionLoss', criterion='L2')),
    # decoder as in MAE (the backbone's own init_cfg takes over inside it)
    init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)
    ])

# the base's normalisation (mean / std, BGR -> RGB); this subclass also
# draws the step's mask and plans every index on the host, moved to the
# device in one non-blocking copy (docs/green_mim.md, "Host planning")
data_preprocessor = dict(type='mmum.GreenMIMDataPreprocessor')

train_dataloader = dict(
    batch_size=256,
    # the batch crosses from pinned memory without blocking
    # (mmum.GreenMIMDataPreprocessor), then the step's plan in one copy
    pin_memory=True,
    # the mmpretrain base's dicts carry `_scope_`, which default_collate
    # would receive as a keyword
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

# AdamW, blr 1.5e-4 scaled by batch / 256, betas (0.9, 0.999) as in the
# paper, in one param group per set of equal options (the same updates as
# one group per parameter, a faster step: docs/efficiency.md)
optim_wrapper = dict(
    constructor='mmum.MergedGroupsOptimWrapperConstructor',
    optimizer=dict(lr=1.5e-4 * 2048 / 256, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        custom_keys={
            'norm': dict(decay_mult=0.0),
            'bias': dict(decay_mult=0.0),
            'relative_position_bias_table': dict(decay_mult=0.0),
            'pos_embed': dict(decay_mult=0.0),
            'mask_token': dict(decay_mult=0.0),
        }))

# 40 warm-up epochs from 1.5e-7 (x 2048/256), then cosine to 0
param_scheduler = [
    dict(_base_.param_scheduler[0], start_factor=1e-3, end=40),
    dict(_base_.param_scheduler[1], T_max=760, begin=40, end=800),
]
train_cfg = dict(max_epochs=800)
auto_scale_lr = dict(base_batch_size=2048)

# Watching the run (k-NN accuracy, reconstructions): the commented-out hooks
# at the end of configs/_base_/default_runtime.py.

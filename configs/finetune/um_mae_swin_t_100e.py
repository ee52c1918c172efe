# Intermediate fine-tuning on ImageNet-1K of a UM-MAE Swin-T, 100 epochs at
# 256 px (UM-MAE Table 8, §4.3): the step between pre-training and the dense
# tasks (Table 6). 8 GPUs x 64 images x 2 accumulation steps = 1024.
#   tools/dist_train.sh configs/finetune/um_mae_swin_t_100e.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN.pth
# The classifier checkpoint (work_dirs/um_mae_swin_t_100e/epoch_100.pth)
# keeps the `backbone.` prefix, so the mmdet / mmseg configs load it with the
# same init_cfg as a pre-training checkpoint.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_256.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmum'], allow_failed_imports=False)

# the UM-MAE pre-training checkpoint (whole algorithm: backbone./neck./head.)
pretrained = 'work_dirs/um_mae_swin_t_200e/epoch_200.pth'

ln = dict(type='LN', eps=1e-6)
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmum.CPBSwinTransformer',
        arch='tiny',
        img_size=256,
        # the same 8x8 windows as pre-training (maps 64/32/16/8 at 256 px);
        # the continuous position bias allows any other size, e.g. 16
        window_size=8,
        drop_path_rate=0.1,
        out_indices=(3, ),
        # the pre-training architecture (released UM-MAE layout): LN + conv
        # patch merging, 32-wide bias MLP, LayerNorm eps 1e-6
        patch_merging='conv',
        cpb_hidden_dims=32,
        norm_cfg=ln,
        patch_cfg=dict(norm_cfg=ln),
        stage_cfgs=dict(block_cfgs=dict(norm_cfg=ln), downsample_cfg=dict(
            norm_cfg=ln)),
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        init_cfg=dict(type='TruncNormal', layer='Linear', std=2e-5),
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))

# 8 GPUs x 64 images x 2 accumulation steps = 1024
train_dataloader = dict(batch_size=64)

# AdamW, blr 5e-4 x 1024 / 256, betas (0.9, 0.999), wd 0.05; layer-wise lr
# decay 0.85: parameters at depth d of L get lr x 0.85 ** (L - 1 - d)
# (patch embedding 0, block j of stage i sum(depths[:i]) + j + 1, head L-1)
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
        flat_decay_mult=0.0,
        custom_keys={'.cpb': dict(decay_mult=0.0)}))

# 5 warm-up epochs, then cosine to 1e-6
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
default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook', interval=1, max_keep_ckpts=3,
        save_best='auto'))
randomness = dict(seed=0, diff_rank_seed=True)
auto_scale_lr = dict(base_batch_size=1024)

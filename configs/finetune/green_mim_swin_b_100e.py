# ImageNet-1K fine-tuning of a GreenMIM Swin-B (Huang et al. 2022, §4.1):
# 224 px, 100 epochs with 20 warm-up, AdamW blr 1.25e-4 per 256 images
# (warm-up and final lr 2.5e-7 per 256), wd 0.05, layer decay 0.9, drop path
# 0.2, augmentation of BEiT / SimMIM (RandAug(9, 0.5), random erasing 0.25,
# mixup 0.8, cutmix 1.0, label smoothing 0.1). Batch 2048 = 8 GPUs x 128 x 2.
# GreenMIM weights are plain mmpretrain SwinTransformer weights.
#   tools/dist_train.sh configs/finetune/green_mim_swin_b_100e.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN.pth
_base_ = [
    '../_base_/models/encoder_layouts.py',
    '../_base_/models/imagenet_classifier.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    '../_base_/schedules/imagenet_finetune_adamw_layer_decay.py',
    '../_base_/finetune_runtime.py',
]

pretrained = 'work_dirs/green_mim_swin_b_800e/epoch_800.pth'
# the LayerNorm eps GreenMIM was pre-trained with (every encoder norm), so the
# encoder computes what it was trained as
ln = dict(type='LN', eps=1e-6)

model = dict(
    backbone=dict(
        type='mmpretrain.SwinTransformer',
        arch='base',
        img_size=224,
        window_size=7,
        drop_path_rate=0.2,
        norm_cfg=ln,
        patch_cfg=dict(norm_cfg=ln),
        stage_cfgs=dict(
            block_cfgs=dict(norm_cfg=ln), downsample_cfg=dict(norm_cfg=ln)),
        out_indices=(3, ),
        # _scope_='mmum': mmum's strict Pretrained (mmum/models/pretrained.py)
        # refuses a checkpoint that leaves backbone weights random
        init_cfg=dict(
            type='Pretrained', _scope_='mmum', checkpoint=pretrained,
            prefix='backbone.')),
    head=dict(in_channels=1024))

# 8 GPUs x 128 images x 2 accumulation steps = 2048
# an image that cannot be read: skipped in training with a warning naming
# it, an error naming it in validation (mmum.SafeLoadImageFromFile)
train_dataloader = dict(
    batch_size=128,
    dataset=dict(pipeline=[
        dict(type='mmum.SafeLoadImageFromFile', on_error='skip'),
        *_base_.train_dataloader.dataset.pipeline[1:]
    ]))
val_dataloader = dict(
    dataset=dict(pipeline=[
        dict(type='mmum.SafeLoadImageFromFile', on_error='raise'),
        *_base_.val_dataloader.dataset.pipeline[1:]
    ]))
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(lr=1.25e-4 * 2048 / 256),
    clip_grad=dict(max_norm=5.0),
    paramwise_cfg=dict(
        layer_decay_rate=0.9,
        custom_keys={
            '.absolute_pos_embed': dict(decay_mult=0.0),
            '.relative_position_bias_table': dict(decay_mult=0.0)
        }))

# warm-up from 2.5e-7 to 1.25e-4 (per 256) over 20 epochs, cosine to 2.5e-7
param_scheduler = [
    dict(_base_.param_scheduler[0], start_factor=2.5e-7 / 1.25e-4, end=20),
    dict(_base_.param_scheduler[1], T_max=80, eta_min=2.5e-7 * 2048 / 256,
         begin=20),
]

auto_scale_lr = dict(base_batch_size=2048)

# Intermediate fine-tuning on ImageNet-1K of a UM-MAE Swin-T, 100 epochs at
# 256 px (UM-MAE Table 8, §4.3): the step between pre-training and the dense
# tasks (Table 6). 8 GPUs x 64 images x 2 accumulation steps = 1024.
#   tools/dist_train.sh configs/finetune/um_mae_swin_t_100e.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN.pth
# The classifier checkpoint (work_dirs/um_mae_swin_t_100e/epoch_100.pth)
# keeps the `backbone.` prefix, so the mmdet / mmseg configs load it with the
# same init_cfg as a pre-training checkpoint.
_base_ = [
    '../_base_/models/encoder_layouts.py',
    '../_base_/models/imagenet_classifier.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_256.py',
    '../_base_/schedules/imagenet_finetune_adamw_layer_decay.py',
    '../_base_/finetune_runtime.py',
]

# the UM-MAE pre-training checkpoint (whole algorithm: backbone./neck./head.)
pretrained = 'work_dirs/um_mae_swin_t_200e/epoch_200.pth'

model = dict(
    backbone=dict(
        # the pre-training architecture (released UM-MAE layout)
        _base_.um_mae_swin_layout,
        type='mmum.CPBSwinTransformer',
        arch='tiny',
        img_size=256,
        # the same 8x8 windows as pre-training (maps 64/32/16/8 at 256 px);
        # the continuous position bias allows any other size, e.g. 16
        window_size=8,
        drop_path_rate=0.1,
        out_indices=(3, ),
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    head=dict(in_channels=768))

# 8 GPUs x 64 images x 2 accumulation steps = 1024
# an image that cannot be read: skipped in training with a warning naming
# it, an error naming it in validation (mmum.SafeLoadImageFromFile)
train_dataloader = dict(
    batch_size=64,
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

# AdamW, blr 5e-4 x 1024 / 256, layer-wise lr decay 0.85 (patch embedding
# depth 0, block j of stage i sum(depths[:i]) + j + 1, head L-1), 5 warm-up
# epochs then cosine to 1e-6: the defaults of the _base_ schedule
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'.cpb': dict(decay_mult=0.0)}))

auto_scale_lr = dict(base_batch_size=1024)

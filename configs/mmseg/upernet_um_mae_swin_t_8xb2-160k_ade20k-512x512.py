# UperNet on ADE20K with the UM-MAE Swin-T (UM-MAE §4, appendix B.4): 512²
# crops, 160k iterations, AdamW lr 1e-4, wd 0.05, poly schedule after 1500
# linear warm-up iterations, batch 16 = 8 GPUs x 2, no layer-wise lr decay
# (it hurts hierarchical ViTs, Table 7). Start from the intermediate
# ImageNet fine-tuning checkpoint (Table 6) or, for the "no intermediate"
# rows, from the pre-training checkpoint itself:
#   tools/dist_train.sh configs/mmseg/upernet_um_mae_swin_t_8xb2-160k_ade20k-512x512.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/um_mae_swin_t_100e/epoch_100.pth
# The heads use SyncBN (multi-GPU); for one process or CPU override it:
#   --cfg-options model.decode_head.norm_cfg.type=BN \
#       model.auxiliary_head.norm_cfg.type=BN
# frozen_stages=k (if you add it) freezes the stem and stages 0..k, one
# stage more than mmdet's / mmseg's Swin for the same k (docs/own_config.md).
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    '../_base_/models/um_mae_dense_backbones.py',
    '../_base_/schedules/dense_adamw.py',
]

# intermediate fine-tuning (or pre-training) checkpoint, `backbone.` prefix
pretrained = 'work_dirs/um_mae_swin_t_100e/epoch_100.pth'
crop_size = (512, 512)

model = dict(
    data_preprocessor=dict(size=crop_size),
    # the pre-training architecture (released UM-MAE layout)
    backbone=dict(
        _base_.um_mae_swin_dense, _delete_=True, arch='tiny', img_size=512,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

train_dataloader = dict(batch_size=2)

optim_wrapper = dict(_base_.dense_adamw, _delete_=True)

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
        end=1500),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        by_epoch=False,
        begin=1500,
        end=160000)
]

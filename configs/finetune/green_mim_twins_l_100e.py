# ImageNet-1K fine-tuning of a GreenMIM Twins-L (Huang et al. 2022, §4.1):
# the Swin-B recipe (100 epochs, 20 warm-up, AdamW blr 1.25e-4 per 256,
# wd 0.05) with the Twins-L layer decay 0.9 and drop path 0.2.
# mmum.GreenTwins without a mask *is* mmpretrain's SVT, plus the
# `get_layer_depth` that layer-wise lr decay needs; GreenMIM checkpoints
# load into it strictly by their `backbone.` prefix. Its PEG adds the input
# back (Twins / SVT), where the released GreenMIM Twins-L (and
# configs/green_mim/twins_l_800e.py) pre-trains without that residual: the
# weights are a starting point, not the pre-trained function. Set
# `model.backbone.peg_residual=False` to fine-tune the pre-trained function
# itself (docs/green_mim.md).
#   tools/dist_train.sh configs/finetune/green_mim_twins_l_100e.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN.pth
_base_ = './green_mim_swin_b_100e.py'

pretrained = 'work_dirs/twins_l_800e/epoch_800.pth'

model = dict(
    backbone=dict(
        _base_.twins_l_layout, _delete_=True, type='mmum.GreenTwins',
        drop_path_rate=0.2, out_indices=(3, ),
        # mmum's strict Pretrained: refuses a checkpoint that leaves
        # backbone weights random
        init_cfg=dict(
            type='Pretrained', _scope_='mmum', checkpoint=pretrained,
            prefix='backbone.')),
    head=dict(in_channels=1024))

optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.9))

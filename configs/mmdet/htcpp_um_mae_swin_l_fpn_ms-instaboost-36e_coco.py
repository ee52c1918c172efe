# htcpp_um_mae_swin_l_fpn_ms-36e_coco.py with InstaBoost copy-paste
# augmentation, the last "++" ingredient. Needs the optional package
# `instaboostfast` (pip install instaboostfast).
_base_ = './htcpp_um_mae_swin_l_fpn_ms-36e_coco.py'

train_pipeline = [
    _base_.train_pipeline[0],
    dict(
        type='InstaBoost',
        action_candidate=('normal', 'horizontal', 'skip'),
        action_prob=(1, 0, 0),
        scale=(0.8, 1.2),
        dx=15,
        dy=15,
        theta=(-1, 1),
        color_prob=0.5,
        hflag=False,
        aug_ratio=0.5),
    *_base_.train_pipeline[1:],
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

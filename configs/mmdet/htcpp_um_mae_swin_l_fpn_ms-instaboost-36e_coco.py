# htcpp_um_mae_swin_l_fpn_ms-36e_coco.py with InstaBoost copy-paste
# augmentation, the last "++" ingredient. Needs the optional package
# `instaboostfast` (pip install instaboostfast).
_base_ = './htcpp_um_mae_swin_l_fpn_ms-36e_coco.py'

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
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
    dict(
        type='LoadAnnotations', with_bbox=True, with_mask=True,
        with_seg=True),
    dict(
        type='RandomResize',
        scale=[(1600, 400), (1600, 1400)],
        keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

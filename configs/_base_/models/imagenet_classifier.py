# The classifier mmum's encoders are fine-tuned with on ImageNet-1K (the
# BEiT / MAE recipe both papers follow): global average pooling, a linear
# head (trunc-normal std 2e-5), label smoothing 0.1, Mixup 0.8 and CutMix 1.0.
# A config adds its `backbone` and the head's `in_channels`.
model = dict(
    type='ImageClassifier',
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        init_cfg=dict(type='TruncNormal', layer='Linear', std=2e-5),
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))

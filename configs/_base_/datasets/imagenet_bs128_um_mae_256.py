# ImageNet-1K for UM-MAE pre-training at 256 px (paper Table 8), in
# mmpretrain's layout: data/imagenet/{train,meta/train.txt}; or any folder of
# images (mmum.ImageFolder: flat, in class folders, labels unused).
_base_ = 'mmpretrain::_base_/datasets/imagenet_bs512_mae.py'

train_pipeline = [
    # a file that cannot be read or decoded is skipped, with a warning
    # naming it (stock LoadImageFromFile stops with a bare OpenCV assertion)
    dict(type='mmum.SafeLoadImageFromFile', on_error='skip'),
    dict(
        type='RandomResizedCrop',
        scale=256,
        crop_ratio_range=(0.2, 1.0),
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5),
    # one visible patch per 2x2 cell, positions drawn as the release does
    dict(
        type='mmum.UniformMasking',
        patch_size=16,
        secondary_ratio=0.25,
        sampling='released'),
    dict(type='PackInputs', algorithm_keys=['secondary_mask']),
]

# the uniform masks are checked on the host and move to the device with the
# images, one tensor per field, from pinned memory, without blocking
data_preprocessor = dict(type='mmum.UMMAEDataPreprocessor')

train_dataloader = dict(
    batch_size=128,
    pin_memory=True,
    # inheriting `mmpretrain::` injects `_scope_` into every dict; the
    # collate function must not receive it
    collate_fn=dict(_delete_=True, type='default_collate'),
    dataset=dict(type='mmum.ImageFolder', pipeline=train_pipeline))

# Runtime of mmum's pre-training configs: mmpretrain's runtime with mmum's
# registry, atomic checkpoints, a NaN/inf guard, per-rank seeds and
# auto-resume.
_base_ = 'mmpretrain::_base_/default_runtime.py'

custom_imports = dict(imports=['mmum'], allow_failed_imports=False)

default_hooks = dict(
    # atomic saving: a kill while saving never breaks the latest checkpoint.
    # A checkpoint is ~3x the model (weights + AdamW moments, which exact
    # resuming needs): ~430 MB for UM-MAE Swin-T. Lighter (docs/failures.md,
    # "Checkpoint size"): max_keep_ckpts=1 (safe: the old file goes only
    # after the new one is complete); published_keys=['meta', 'state_dict']
    # (a weights-only copy of the last checkpoint after training).
    checkpoint=dict(type='mmum.SafeCheckpointHook', interval=1,
                    max_keep_ckpts=3))
# stop with a message on a NaN/inf loss, before it reaches a checkpoint
custom_hooks = [dict(type='mmum.NaNGuardHook')]

randomness = dict(seed=0, diff_rank_seed=True)
resume = True

# Watching the run (docs/watching.md): uncomment and set the
# ImageNet paths to log a weighted k-NN top-1/top-5 of the encoder (10k
# train / 5k val images) every 10 epochs and to draw the reconstructions of 4
# val images (<work_dir>/reconstructions and the Visualizer backends; for
# LocalMIM / ViTFreeze the pictures show the HOG of 16-px cells) in every
# pre-training config on this runtime (UM-MAE Swin / PVT, GreenMIM,
# LocalMIM, ViTFreeze, SimMIM).
# custom_hooks += [
#     dict(type='mmum.KNNEvalHook', interval=10,
#          train_dataset=dict(type='ImageNet', data_root='data/imagenet',
#                             split='train'), train_subset=10000,
#          val_dataset=dict(type='ImageNet', data_root='data/imagenet',
#                           split='val'), val_subset=5000),
#     dict(type='mmum.ReconstructionHook', interval=10, num_images=4,
#          dataset=dict(type='ImageNet', data_root='data/imagenet',
#                       split='val')),
# ]

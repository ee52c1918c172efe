# UM-MAE, Swin-T, 200 epochs on ImageNet-1K at 256 px (paper Table 8), the
# released architecture and Uniform Sampling (see the _base_ files):
#   tools/dist_train.sh configs/um_mae/swin_t_200e.py 8
_base_ = [
    '../_base_/models/um_mae_swin_t.py',
    '../_base_/datasets/imagenet_bs128_um_mae_256.py',
    '../_base_/schedules/um_mae_adamw_coslr.py',
    'mmpretrain::_base_/default_runtime.py',
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    # atomic saving: a kill while saving never breaks the latest checkpoint
    checkpoint=dict(type='mmum.SafeCheckpointHook', interval=1,
                    max_keep_ckpts=3))
# stop with a message on a NaN/inf loss, before it reaches a checkpoint
custom_hooks = [dict(type='mmum.NaNGuardHook')]

randomness = dict(seed=0, diff_rank_seed=True)
resume = True

# Watching the run (README "Watching a run"): uncomment and set the
# ImageNet paths to log a weighted k-NN top-1/top-5 of the encoder (10k
# train / 5k val images) every 10 epochs and to draw
# the reconstructions of 4 val images (<work_dir>/reconstructions and
# the Visualizer backends).
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

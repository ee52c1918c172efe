# UM-MAE, Swin-T, 200 epochs on ImageNet-1K at 256 px (paper Table 8), the
# released architecture and Uniform Sampling (see the _base_ files):
#   tools/dist_train.sh configs/um_mae/swin_t_200e.py 8
_base_ = [
    '../_base_/models/um_mae_swin_t.py',
    '../_base_/datasets/imagenet_bs128_um_mae_256.py',
    '../_base_/schedules/um_mae_adamw_coslr.py',
    '../_base_/default_runtime.py',
]

default_hooks = dict(logger=dict(type='LoggerHook', interval=50))

# Watching the run (k-NN accuracy, reconstructions): the commented-out hooks
# at the end of configs/_base_/default_runtime.py.

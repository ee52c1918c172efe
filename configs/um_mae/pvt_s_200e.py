# UM-MAE, PVT-S, 200 epochs on ImageNet-1K at 256 px (paper Tables 3, 8):
# the Swin-T recipe with the PVT encoder on the compact 128x128 input
# (key/value pooling {4,2,1,1}; {8,4,2,1} when fine-tuned as mmum.PVT),
# as the released `mae_pvt_small_256_dec512d2b` (decoder 512 -> 4 x 512,
# then PixelShuffle).
#   tools/dist_train.sh configs/um_mae/pvt_s_200e.py 8
_base_ = './swin_t_200e.py'

model = dict(
    backbone=dict(
        _base_.pvt_s_layout, _delete_=True, type='mmum.UMPVT', img_size=128,
        drop_path_rate=0.0, out_indices=(3, )),
    neck=dict(embed_dim=512))

# Watching the run (k-NN accuracy, reconstructions): the commented-out hooks
# at the end of configs/_base_/default_runtime.py.

# SimMIM baseline of UM-MAE's Table 3 for PVT-S: the whole 256-px image with
# a mask token on the full-resolution input and the fine-tuning reduction
# ratios {8,4,2,1}; same masking, schedule and decoder as
# configs/simmim/swin_t_256_200e.py.
#   tools/dist_train.sh configs/simmim/pvt_s_256_200e.py 8
_base_ = './swin_t_256_200e.py'

model = dict(
    backbone=dict(
        _base_.pvt_s_layout, _delete_=True, type='mmum.SimMIMPVT',
        img_size=256, drop_path_rate=0.0, out_indices=(3, )),
    neck=dict(in_channels=512))

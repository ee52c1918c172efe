# ViTFreeze: LocalMIM-HOG ViT-B/16, 100 epochs (10 warm-up), FreezeOut with
# t_0 = 0.8, cubic spacing and scaled lrs; decoders pruned once the block
# feeding them is frozen (arXiv 2312.02194). 8 GPUs x 512 images.
_base_ = [
    './local_mim_vit_b_100e.py',
    '../_base_/schedules/freezeout.py',
]

# every layer warms up to its own peak lr over 10 epochs, then follows its
# own cosine to 0, where it freezes (patch embedding at epoch 51.2, ...,
# block 12 and the decoders never)
param_scheduler = [_base_.freezeout_lr]

# frozen layers: eval mode, restored on resume, DDP check; decoder pruning;
# then the runtime's hooks (NaN/inf guard)
custom_hooks = _base_.freezeout_hooks + _base_.custom_hooks

# frozen parameters stop receiving gradients: DDP must not wait for them
find_unused_parameters = True

# Watching the run (k-NN accuracy, HOG reconstructions): the commented-out
# hooks at the end of configs/_base_/default_runtime.py.

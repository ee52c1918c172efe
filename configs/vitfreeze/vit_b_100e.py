# ViTFreeze: LocalMIM-HOG ViT-B/16, 100 epochs (10 warm-up), FreezeOut with
# t_0 = 0.8, cubic spacing and scaled lrs; decoders pruned once the block
# feeding them is frozen (arXiv 2312.02194). 8 GPUs x 512 images.
_base_ = ['./local_mim_vit_b_100e.py']

# every layer warms up to its own peak lr over 10 epochs, then follows its
# own cosine to 0, where it freezes (patch embedding at epoch 51.2, ...,
# block 12 and the decoders never)
param_scheduler = [
    dict(
        type='mmum.FreezeOutLR',
        t_0=0.8,
        spacing='cubic',
        scale_lr=True,
        warmup=10,
        by_epoch=True,
        begin=0,
        end=100,
        convert_to_iter_based=True)
]

custom_hooks = [
    # frozen layers: eval mode, restored on resume, DDP check
    dict(type='mmum.FreezeOutHook'),
    dict(type='mmum.DecoderPruningHook'),
    dict(type='mmum.NaNGuardHook'),  # stop on a NaN/inf loss
]

# frozen parameters stop receiving gradients: DDP must not wait for them
find_unused_parameters = True

# Watching the run (k-NN accuracy, HOG reconstructions): the commented-out
# hooks at the end of configs/_base_/default_runtime.py.

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

# Watching the run (README "Watching a run"): uncomment and set the
# ImageNet paths to log a weighted k-NN top-1/top-5 of the encoder (10k
# train / 5k val images) every 10 epochs and to draw
# the reconstructions of 4 val images (<work_dir>/reconstructions and
# the Visualizer backends).
# LocalMIM predicts HOG: the pictures show the HOG of 16-px cells.
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

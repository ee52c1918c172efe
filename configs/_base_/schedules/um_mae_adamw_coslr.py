# AdamW + 10-epoch linear warm-up + cosine, UM-MAE pre-training (Table 8).
# lr = 1.5e-4 x total_batch / 256 with a 4096 total batch.
_base_ = './adamw_warmup_cosine.py'

# 8 GPUs x 128 images x 4 accumulation steps = 4096. One param group per set
# of equal options instead of one per parameter: the same updates, a faster
# optimizer step (docs/efficiency.md); used by the SimMIM baselines too.
optim_wrapper = dict(
    accumulative_counts=4,
    constructor='mmum.MergedGroupsOptimWrapperConstructor',
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'mask_token': dict(decay_mult=0.),
            'cpb': dict(decay_mult=0.),
        }))

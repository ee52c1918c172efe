# Runtime of mmum's ImageNet fine-tuning configs: mmpretrain's runtime with
# mmum's registry, the best checkpoint kept by validation accuracy and
# per-rank seeds.
_base_ = 'mmpretrain::_base_/default_runtime.py'

custom_imports = dict(imports=['mmum'], allow_failed_imports=False)

default_hooks = dict(
    # lighter: published_keys=['meta', 'state_dict'] writes a weights-only
    # copy of the last and the best checkpoint after training
    # (docs/failures.md, "Checkpoint size")
    checkpoint=dict(
        type='CheckpointHook', interval=1, max_keep_ckpts=3,
        save_best='auto'))
randomness = dict(seed=0, diff_rank_seed=True)

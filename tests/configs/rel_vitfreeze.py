# tests/configs/tiny_vitfreeze.py (LocalMIM + FreezeOut + decoder pruning,
# 12 CPU iterations, checkpoints every 2) with the reliability hooks and
# tests/_reliability_probe.py's recorder.
_base_ = './tiny_vitfreeze.py'
custom_imports = dict(imports=['mmum', '_reliability_probe'],
                      allow_failed_imports=False)
custom_hooks = [
    dict(type='mmum.FreezeOutHook'),
    dict(type='mmum.DecoderPruningHook'),
    dict(type='mmum.NaNGuardHook'),
    dict(type='ReliabilityProbeHook'),
]
default_hooks = dict(checkpoint=dict(max_keep_ckpts=2))
randomness = dict(seed=0, diff_rank_seed=True, deterministic=True)
resume = False

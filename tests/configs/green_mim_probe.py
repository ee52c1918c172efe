# configs/green_mim/swin_b_800e.py plus a hook that records each rank's masks
_base_ = '../../configs/green_mim/swin_b_800e.py'
custom_imports = dict(imports=['mmum', '_ddp_probe'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='MaskProbeHook')]

# configs/um_mae/swin_t_200e.py plus a hook that records each rank's masks
_base_ = '../../configs/um_mae/swin_t_200e.py'
custom_imports = dict(imports=['mmum', '_ddp_probe'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='MaskProbeHook')]

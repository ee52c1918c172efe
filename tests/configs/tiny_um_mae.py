# configs/um_mae/swin_t_200e.py shrunk to a few CPU iterations (the model
# and data of tests/configs/rel_um_mae.py without its probes): a tiny Swin
# on 128-px images (compact 64 px, window 4). Point
# ``train_dataloader.dataset.data_root`` at an ImageNet-layout folder
# (tests/_tiny_runs.py::make_imagenet_folder).
_base_ = './rel_um_mae.py'
custom_imports = dict(imports=['mmum'], allow_failed_imports=False)
custom_hooks = [dict(type='mmum.NaNGuardHook')]

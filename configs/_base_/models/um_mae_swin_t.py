# UM-MAE with a Swin-T encoder on the compact 128x128 input of a 256 px image,
# in the released architecture (implus/UM-MAE `mae_swin_tiny_256_dec512d2b`):
# the layout of ./encoder_layouts.py and a decoder that embeds each stride-32
# token (768 -> 4 x 512) before PixelShuffle. A released checkpoint converted
# by tools/model_converters/um_mae_official_to_mmum.py loads into it as is.
_base_ = './encoder_layouts.py'

model = dict(
    type='mmum.UMMAE',
    patch_size=16,
    # checks the uniform masks on the host, moves them in one piece
    data_preprocessor=dict(
        type='mmum.UMMAEDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True),
    backbone=dict(
        _base_.um_mae_swin_layout,
        type='mmum.UMSwinTransformer',
        arch='tiny',
        img_size=128,
        window_size=8,
        drop_path_rate=0.0,
        out_indices=(3, )),
    neck=dict(
        type='mmum.UMMAEEmbedFirstDecoder',
        upscale_factor=2,
        embed_dim=768,
        num_patches=256,
        patch_size=16,
        decoder_embed_dim=512,
        decoder_depth=2,
        decoder_num_heads=16),
    head=dict(
        type='mmpretrain.MAEPretrainHead',
        norm_pix=True,
        patch_size=16,
        loss=dict(type='mmpretrain.PixelReconstructionLoss', criterion='L2')))

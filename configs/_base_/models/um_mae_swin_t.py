# UM-MAE with a Swin-T encoder on the compact 128x128 input of a 256 px image,
# in the released architecture (implus/UM-MAE `mae_swin_tiny_256_dec512d2b`):
# patch merging = LayerNorm over C + 2x2 stride-2 conv, a 32-wide bias MLP,
# LayerNorm eps 1e-6 everywhere, and a decoder that embeds each stride-32
# token (768 -> 4 x 512) before PixelShuffle. A released checkpoint converted
# by tools/model_converters/um_mae_official_to_mmum.py loads into it as is.
# mmpretrain's layout (LayerNorm over 4C + linear merging, 256-wide bias MLP,
# eps 1e-5, decoder mmum.UMMAEPretrainDecoder) is the classes' default.
ln = dict(type='LN', eps=1e-6)
model = dict(
    type='mmum.UMMAE',
    patch_size=16,
    data_preprocessor=dict(
        type='mmpretrain.SelfSupDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True),
    backbone=dict(
        type='mmum.UMSwinTransformer',
        arch='tiny',
        img_size=128,
        window_size=8,
        drop_path_rate=0.0,
        out_indices=(3, ),
        patch_merging='conv',
        cpb_hidden_dims=32,
        norm_cfg=ln,
        patch_cfg=dict(norm_cfg=ln),
        stage_cfgs=dict(block_cfgs=dict(norm_cfg=ln), downsample_cfg=dict(
            norm_cfg=ln))),
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

# UperNet with vmamba_tiny_s1l8 on ADE20K, 512x512, 160k iterations (test with --tta for the multi-scale mIoU).
# Put the classification checkpoint at checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth (or change init_cfg) before training.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(type='VMamba', arch='vmamba_tiny_s1l8', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

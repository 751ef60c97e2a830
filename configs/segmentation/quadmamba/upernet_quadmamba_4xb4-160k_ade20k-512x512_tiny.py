# UperNet with quadmamba_tiny on ADE20K, 512x512, 160k iterations (test with --tta for the multi-scale mIoU).
# Put the classification checkpoint at checkpoints/quadmamba_tiny.pth (or change init_cfg) before training.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(type='QuadMamba', arch='quadmamba_tiny', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/quadmamba_tiny.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

# UperNet with spatialmamba_base on ADE20K, 512x512, 160k iterations (test with --tta for the multi-scale mIoU).
# Put the classification checkpoint at checkpoints/spatialmamba_base.pth (or change init_cfg) before training.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(type='SpatialMamba', arch='spatialmamba_base', drop_path_rate=0.5,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/spatialmamba_base.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

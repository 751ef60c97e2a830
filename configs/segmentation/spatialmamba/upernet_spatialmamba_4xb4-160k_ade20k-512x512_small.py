# UperNet with spatialmamba_small on ADE20K, 512x512, 160k iterations (test with --tta for the multi-scale mIoU).
# Put the classification checkpoint at checkpoints/spatialmamba_small.pth (or change init_cfg) before training.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(type='SpatialMamba', arch='spatialmamba_small', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/spatialmamba_small.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))

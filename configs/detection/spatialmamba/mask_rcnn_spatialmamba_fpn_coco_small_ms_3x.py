# Mask R-CNN + FPN with spatialmamba_small on COCO, 3x multi-scale schedule.
# Put the classification checkpoint at checkpoints/spatialmamba_small.pth (or change init_cfg) before training.
_base_ = ['../_base_/mask_rcnn_ms_3x.py']
model = dict(
    backbone=dict(type='SpatialMamba', arch='spatialmamba_small', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/spatialmamba_small.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))

# Mask R-CNN + FPN with spatialmamba_base on COCO, 1x schedule.
# Put the classification checkpoint at checkpoints/spatialmamba_base.pth (or change init_cfg) before training.
_base_ = ['../_base_/mask_rcnn_1x.py']
model = dict(
    backbone=dict(type='SpatialMamba', arch='spatialmamba_base', drop_path_rate=0.5,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/spatialmamba_base.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# Mask R-CNN + FPN with quadmamba_tiny on COCO, 1x schedule.
# Put the classification checkpoint at checkpoints/quadmamba_tiny.pth (or change init_cfg) before training.
_base_ = ['../_base_/mask_rcnn_1x.py']
model = dict(
    backbone=dict(type='QuadMamba', arch='quadmamba_tiny', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/quadmamba_tiny.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

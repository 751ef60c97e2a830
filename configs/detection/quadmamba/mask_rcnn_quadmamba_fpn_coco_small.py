# Mask R-CNN + FPN with quadmamba_small on COCO, 1x schedule.
# Put the classification checkpoint at checkpoints/quadmamba_small.pth (or change init_cfg) before training.
_base_ = ['../_base_/mask_rcnn_1x.py']
model = dict(
    backbone=dict(type='QuadMamba', arch='quadmamba_small', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/quadmamba_small.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

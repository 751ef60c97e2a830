# Mask R-CNN + FPN with fractalmamba_tiny on COCO, 3x multi-scale schedule.
# Put the classification checkpoint at checkpoints/fractalmamba_tiny.pth (or change init_cfg) before training.
_base_ = ['../_base_/mask_rcnn_ms_3x.py']
model = dict(
    backbone=dict(type='FractalMamba', arch='fractalmamba_tiny', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/fractalmamba_tiny.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

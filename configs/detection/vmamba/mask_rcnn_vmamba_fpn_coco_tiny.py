# Mask R-CNN + FPN with vmamba_tiny_s1l8 on COCO, 1x schedule.
# Put the classification checkpoint at checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth (or change init_cfg) before training.
_base_ = ['../_base_/mask_rcnn_1x.py']
model = dict(
    backbone=dict(type='VMamba', arch='vmamba_tiny_s1l8', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# Mask R-CNN + FPN with vmamba_base_s2l15 on COCO, 1x schedule.
# Put the classification checkpoint at checkpoints/vssm_base_0229_ckpt_epoch_237.pth (or change init_cfg) before training.
_base_ = ['../_base_/mask_rcnn_1x.py']
model = dict(
    backbone=dict(type='VMamba', arch='vmamba_base_s2l15', drop_path_rate=0.6,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm_base_0229_ckpt_epoch_237.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))

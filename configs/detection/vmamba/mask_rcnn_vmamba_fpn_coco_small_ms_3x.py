# Mask R-CNN + FPN with vmamba_small_s2l15 on COCO, 3x multi-scale schedule.
# Put the classification checkpoint at checkpoints/vssm_small_0229_ckpt_epoch_222.pth (or change init_cfg) before training.
_base_ = ['../_base_/mask_rcnn_ms_3x.py']
model = dict(
    backbone=dict(type='VMamba', arch='vmamba_small_s2l15', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm_small_0229_ckpt_epoch_222.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# Mask R-CNN + FPN, 3x schedule with multi-scale crop augmentation (mmdet's Swin-T "ms-crop-3x" recipe:
# 36 epochs, steps at 27 and 33), with a vssm backbone.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']
custom_imports = dict(imports=['vssm.mm.mmdet'], allow_failed_imports=False)
model = dict(backbone=dict(_delete_=True, type='VMamba', arch='vmamba_tiny_s1l8', out_indices=(0, 1, 2, 3)))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'norm': dict(decay_mult=0.), '.A_logs': dict(decay_mult=0.), '.Ds': dict(decay_mult=0.),
    '.dt_projs_bias': dict(decay_mult=0.)}))

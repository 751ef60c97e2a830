# Mask R-CNN + FPN, 1x schedule on COCO (mmdet's Swin-T recipe: AdamW 1e-4, weight decay 0.05, 12 epochs,
# steps at 8 and 11, batch 2 x 8 GPUs), with a vssm backbone. A config built on this one sets
# model.backbone (type, arch, drop_path_rate, init_cfg) and model.neck.in_channels.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['vssm.mm.mmdet'], allow_failed_imports=False)
model = dict(backbone=dict(_delete_=True, type='VMamba', arch='vmamba_tiny_s1l8', out_indices=(0, 1, 2, 3)))
# no weight decay on norms and on the scan dynamics (A_logs, Ds, dt_projs_bias)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'norm': dict(decay_mult=0.), '.A_logs': dict(decay_mult=0.), '.Ds': dict(decay_mult=0.),
    '.dt_projs_bias': dict(decay_mult=0.)}))

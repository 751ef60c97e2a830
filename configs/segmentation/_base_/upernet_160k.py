# UperNet on ADE20K 512x512, 160k iterations (mmseg's Swin-T recipe: AdamW 6e-5, weight decay 0.01, poly
# decay with 1500 linear warm-up iterations), batch 4 x 4 GPUs, with a vssm backbone. A config built on
# this one sets model.backbone (type, arch, drop_path_rate, init_cfg) and the heads' in_channels.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['vssm.mm.mmseg'], allow_failed_imports=False)
model = dict(backbone=dict(_delete_=True, type='VMamba', arch='vmamba_tiny_s1l8', out_indices=(0, 1, 2, 3)))
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'norm': dict(decay_mult=0.), '.A_logs': dict(decay_mult=0.), '.Ds': dict(decay_mult=0.),
    '.dt_projs_bias': dict(decay_mult=0.)}))

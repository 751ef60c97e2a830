# UperNet with vmamba_small_s2l15 on ADE20K, 512x512, 160k iterations (test with --tta for the multi-scale mIoU).
# Put the classification checkpoint at checkpoints/vssm_small_0229_ckpt_epoch_222.pth (or change init_cfg) before training.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(type='VMamba', arch='vmamba_small_s2l15', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm_small_0229_ckpt_epoch_222.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

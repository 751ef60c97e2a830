# UperNet on the generated shapes in ADE20K format (python scripts/make_shapes_data.py): a nano backbone
# trained from scratch on one CPU process in minutes (bash segmentation/tools/dist_train.sh CONFIG 1), 128x128
# images, evaluated once at the end (mIoU over the background and the four shape classes).
_base_ = ['mmseg::_base_/models/upernet_swin.py', 'mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['vssm.mm.mmseg'], allow_failed_imports=False)
data_root = 'data/shapes_ade/'
norm_cfg = dict(type='BN', requires_grad=True)
classes = ('background', 'circle', 'square', 'triangle', 'star')
# The background covers ~87% of the pixels: at full weight a short run stays at the constant answer (mIoU 17).
class_weight = [0.5, 1.0, 1.0, 1.0, 1.0]
model = dict(
    data_preprocessor=dict(size=(128, 128)),
    backbone=dict(_delete_=True, type='VMamba', arch='vmamba_nano', out_indices=(0, 1, 2, 3)),
    # UperNet over stages 1-3 (strides 8-32): its 3x3 fusion convolutions at stride 4 were a quarter of a training
    # step (25 of 108 ms); without them a step takes 0.55-0.8x the time, and the extra steps more than make up for
    # the coarser output (a perfect stride-8 prediction, upsampled, would score mIoU 90 on these shapes;
    # stride 4: 96)
    decode_head=dict(in_index=(1, 2, 3), in_channels=[64, 128, 256], channels=64, num_classes=len(classes),
                     norm_cfg=norm_cfg,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0,
                                      class_weight=class_weight)),
    # the auxiliary head on stage 3 at full weight: the shape's class is learnt there first
    auxiliary_head=dict(in_channels=128, channels=64, num_classes=len(classes), norm_cfg=norm_cfg,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0,
                                         class_weight=class_weight)))
dataset = dict(type='BaseSegDataset', data_root=data_root, reduce_zero_label=True, img_suffix='.jpg',
               seg_map_suffix='.png',
               metainfo=dict(classes=classes, palette=[[0, 0, 0], [220, 60, 60], [60, 200, 60], [60, 90, 230],
                                                       [230, 200, 40]]))
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                  dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
                  dict(type='PackSegInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                 dict(type='PackSegInputs')]
tta_model = dict(type='SegTTAModel')
tta_pipeline = [dict(type='LoadImageFromFile', backend_args=None),
                dict(type='TestTimeAug', transforms=[
                    [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in (0.75, 1.0, 1.25)],
                    [dict(type='RandomFlip', prob=0., direction='horizontal'),
                     dict(type='RandomFlip', prob=1., direction='horizontal')],
                    [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        sampler=dict(type='InfiniteSampler', shuffle=True),
                        dataset=dict(**dataset, data_prefix=dict(img_path='images/training',
                                                                 seg_map_path='annotations/training'),
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(**dataset, data_prefix=dict(img_path='images/validation',
                                                               seg_map_path='annotations/validation'),
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
max_iters = 6000  # 15 epochs of the 1600 training images at batch 4 (batch 2 or 8 learn less from as many images)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# fused: one kernel updates all parameters (on a CPU torch's default is a Python loop over them)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.01, fused=True),
                     clip_grad=dict(max_norm=10.0))
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
                   dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters, eta_min_ratio=0.01)]
default_hooks = dict(logger=dict(type="LoggerHook", interval=200),
                     checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)  # the same run, and figure, on the same machine and thread count

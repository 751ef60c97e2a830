# UperNet on the generated shapes in ADE20K format (python scripts/make_shapes_data.py): a CPU smoke run
# of a nano backbone, 128x128 crops, a few iterations and an mIoU evaluation.
_base_ = ['mmseg::_base_/models/upernet_swin.py', 'mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['vssm.mm.mmseg'], allow_failed_imports=False)
data_root = 'data/shapes_ade/'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=(128, 128)),
    backbone=dict(_delete_=True, type='VMamba', arch='vmamba_nano', out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64, num_classes=4, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=4, norm_cfg=norm_cfg))
dataset = dict(type='BaseSegDataset', data_root=data_root, reduce_zero_label=True, img_suffix='.jpg',
               seg_map_suffix='.png',
               metainfo=dict(classes=('background', 'square', 'circle', 'triangle'),
                             palette=[[0, 0, 0], [200, 40, 40], [40, 200, 40], [40, 40, 200]]))
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                  dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                 dict(type='PackSegInputs')]
tta_pipeline = [dict(type='LoadImageFromFile', backend_args=None),
                dict(type='TestTimeAug', transforms=[
                    [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in (0.75, 1.0, 1.25)],
                    [dict(type='RandomFlip', prob=0., direction='horizontal'),
                     dict(type='RandomFlip', prob=1., direction='horizontal')],
                    [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
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
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=6e-5, weight_decay=0.01))
param_scheduler = []
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))

# Mask R-CNN + FPN on the generated shapes (python scripts/make_shapes_data.py): a nano backbone trained from
# scratch on one CPU process in minutes (bash detection/tools/dist_train.sh CONFIG 1), evaluated once at the end.
# Sized for 128x128 images holding shapes of 20-77 px: four FPN levels (strides 4-32) with one anchor size
# each (12, 24, 48, 96 px), narrow heads (64-channel FPN, 256-wide box head, 2-conv mask head), fewer
# proposals and RoI samples than the COCO recipe, torchvision's RoIAlign (mmcv's is slow on a CPU).
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['vssm.mm.mmdet'], allow_failed_imports=False)
data_root = 'data/shapes_coco/'
classes = ('circle', 'square', 'triangle', 'star')
width = 64  # FPN, RPN and RoI feature channels
roi_layer = dict(type='RoIAlign', sampling_ratio=1, use_torchvision=True)
model = dict(
    backbone=dict(_delete_=True, type='VMamba', arch='vmamba_nano', out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=width, num_outs=4),
    rpn_head=dict(in_channels=width, feat_channels=width,
                  anchor_generator=dict(scales=[3], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32])),
    roi_head=dict(
        bbox_roi_extractor=dict(roi_layer=dict(output_size=7, **roi_layer), out_channels=width, finest_scale=14),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(roi_layer=dict(output_size=14, **roi_layer), out_channels=width, finest_scale=14),
        mask_head=dict(num_convs=2, in_channels=width, conv_out_channels=width, num_classes=len(classes))),
    train_cfg=dict(rpn=dict(sampler=dict(num=128)),
                   rpn_proposal=dict(nms_pre=500, max_per_img=200),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200), rcnn=dict(max_per_img=30)))
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                  dict(type='Resize', scale=(128, 128), keep_ratio=True),
                  dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
                  dict(type='PackDetInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(128, 128), keep_ratio=True),
                 dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                 dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                       'scale_factor'))]
dataset = dict(type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        sampler=dict(type='DefaultSampler', shuffle=True),
                        batch_sampler=dict(type='AspectRatioBatchSampler'),
                        dataset=dict(**dataset, ann_file='annotations/instances_train2017.json',
                                     data_prefix=dict(img='train2017/'), pipeline=train_pipeline,
                                     filter_cfg=dict(filter_empty_gt=True, min_size=4)))
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, drop_last=False,
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(**dataset, ann_file='annotations/instances_val2017.json',
                                   data_prefix=dict(img='val2017/'), pipeline=test_pipeline, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
                     metric=['bbox', 'segm'], format_only=False)
test_evaluator = val_evaluator
max_epochs = 5  # 2,000 steps at batch 4: 7.7 minutes on 2 cores (6 epochs: bbox mAP 0.645 where 5 gave 0.505-0.561)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, foreach=True),
                     clip_grad=dict(max_norm=10.0))
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
                   dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min_ratio=0.01,
                        convert_to_iter_based=True)]
default_hooks = dict(logger=dict(type='LoggerHook', interval=20),
                     checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))

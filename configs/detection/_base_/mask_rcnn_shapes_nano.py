# Mask R-CNN + FPN on the generated shapes (python scripts/make_shapes_data.py): a CPU smoke run of a nano
# backbone, 128x128 images, one short epoch and a COCO evaluation.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['vssm.mm.mmdet'], allow_failed_imports=False)
data_root = 'data/shapes_coco/'
classes = ('square', 'circle', 'triangle')
model = dict(
    backbone=dict(_delete_=True, type='VMamba', arch='vmamba_nano', out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=64), bbox_head=dict(in_channels=64, fc_out_channels=128,
                                                                            num_classes=3),
                  mask_roi_extractor=dict(out_channels=64), mask_head=dict(in_channels=64, conv_out_channels=64,
                                                                           num_classes=3)),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=20)))
pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='Resize', scale=(128, 128), keep_ratio=True), dict(type='PackDetInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(128, 128), keep_ratio=True),
                 dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                 dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                       'scale_factor'))]
dataset = dict(type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        sampler=dict(type='DefaultSampler', shuffle=True), batch_sampler=dict(type='AspectRatioBatchSampler'),
                        dataset=dict(**dataset, ann_file='annotations/instances_train2017.json',
                                     data_prefix=dict(img='train2017/'), pipeline=pipeline,
                                     filter_cfg=dict(filter_empty_gt=True, min_size=8)))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, drop_last=False,
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(**dataset, ann_file='annotations/instances_val2017.json',
                                   data_prefix=dict(img='val2017/'), pipeline=test_pipeline, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
                     metric=['bbox', 'segm'], format_only=False)
test_evaluator = val_evaluator
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05))
param_scheduler = []
default_hooks = dict(logger=dict(type='LoggerHook', interval=1), checkpoint=dict(type='CheckpointHook', interval=1))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))

# Mask R-CNN + vmamba_nano, from scratch, on the generated shapes (scripts/make_shapes_data.py), one CPU process:
# bash tools/dist_train.sh THIS_CONFIG 1 (figures: README, detection and segmentation; scripts/bench_shapes.py).
_base_ = ['../_base_/mask_rcnn_shapes_nano.py']
model = dict(backbone=dict(type='VMamba', arch='vmamba_nano'))

# CPU smoke run: Mask R-CNN with quadmamba_nano on the generated shapes (scripts/make_shapes_data.py).
_base_ = ['../_base_/mask_rcnn_shapes_nano.py']
model = dict(backbone=dict(type='QuadMamba', arch='quadmamba_nano'))

# CPU smoke run: UperNet with spatialmamba_nano on the generated shapes (scripts/make_shapes_data.py).
_base_ = ['../_base_/upernet_shapes_nano.py']
model = dict(backbone=dict(type='SpatialMamba', arch='spatialmamba_nano'))

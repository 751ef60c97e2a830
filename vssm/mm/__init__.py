"""OpenMMLab adapters: the four families as mmdet / mmseg backbones (``vssm.mm.mmdet``, ``vssm.mm.mmseg``).

Configs load them with ``custom_imports = dict(imports=["vssm.mm.mmdet"], allow_failed_imports=False)``
and ``backbone=dict(type="VMamba", arch="vmamba_tiny_s1l8", ...)`` (types ``VMamba``, ``SpatialMamba``,
``QuadMamba``, ``FractalMamba``; ``arch`` is a registered size). Importing this package imports neither
library.
"""

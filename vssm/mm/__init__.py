"""OpenMMLab adapters: every registered family as an mmdet / mmseg backbone (``vssm.mm.mmdet``, ``vssm.mm.mmseg``).

Configs load them with ``custom_imports = dict(imports=["vssm.mm.mmdet"], allow_failed_imports=False)``
and ``backbone=dict(type="VMamba", arch="vmamba_tiny_s1l8", ...)`` (the type is a family's ``title``, ``arch`` one
of its registered sizes; families of ``VSSM_PLUGINS`` register too). Importing this package imports neither
library.
"""

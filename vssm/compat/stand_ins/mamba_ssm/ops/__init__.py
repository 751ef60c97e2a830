"""vssm's stand-in for ``mamba_ssm.ops``: only ``selective_scan_interface`` is provided."""
__vssm_stand_in__ = True

"""vssm's stand-in for mamba_ssm's compiled ``selective_scan_cuda``: the same ``fwd`` / ``bwd`` on vssm's
selective scan, on any device (see :mod:`vssm.compat.kernels`). Loaded by :func:`vssm.compat.install`."""
from vssm.compat.kernels import mamba_bwd as bwd, mamba_fwd as fwd

__vssm_stand_in__ = True
__all__ = ["fwd", "bwd"]

"""vssm's stand-in for VMamba's compiled ``selective_scan_cuda_core``: the same ``fwd`` / ``bwd`` on
vssm's selective scan, on any device (see :mod:`vssm.compat.kernels`). Loaded by :func:`vssm.compat.install`."""
from vssm.compat.kernels import core_bwd as bwd, core_fwd as fwd

__vssm_stand_in__ = True
__all__ = ["fwd", "bwd"]

"""vssm's stand-in for ``mamba_ssm.ops.selective_scan_interface``: ``selective_scan_fn`` and
``selective_scan_ref`` on vssm's selective scan (see :mod:`vssm.compat.mamba_ssm`). The fused Mamba-block
functions (``mamba_inner_fn``, ...) need causal_conv1d's kernels and are not provided."""
from vssm.compat.importer import unsupported
from vssm.compat.mamba_ssm import selective_scan_fn, selective_scan_ref

__vssm_stand_in__ = True
__all__ = ["selective_scan_fn", "selective_scan_ref"]

_FUSED = ("mamba_inner_fn", "mamba_inner_ref", "MambaInnerFn", "bimamba_inner_fn", "bimamba_inner_ref",
          "BiMambaInnerFn", "mamba_inner_fn_no_out_proj", "MambaInnerFnNoOutProj")


def __getattr__(name):
    if name in _FUSED:
        raise unsupported(f"mamba_ssm.ops.selective_scan_interface.{name}")
    raise AttributeError(f"module 'mamba_ssm.ops.selective_scan_interface' (vssm's stand-in) has no attribute {name!r}")

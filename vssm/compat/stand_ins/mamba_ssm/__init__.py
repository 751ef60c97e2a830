"""vssm's stand-in for the ``mamba_ssm`` package, loaded by :func:`vssm.compat.install` when mamba_ssm is not
installed. It provides ``mamba_ssm.ops.selective_scan_interface`` (``selective_scan_fn``, ``selective_scan_ref``)
only; the Mamba / Mamba2 modules need mamba_ssm itself (and causal_conv1d)."""
from vssm.compat.importer import unsupported

__vssm_stand_in__ = True


def __getattr__(name):
    if name in ("Mamba", "Mamba2", "MambaLMHeadModel"):
        raise unsupported(f"mamba_ssm.{name}")
    raise AttributeError(f"module 'mamba_ssm' (vssm's stand-in) has no attribute {name!r}")

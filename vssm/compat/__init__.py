"""Run code written for mamba_ssm's and VMamba's compiled selective-scan kernels on vssm's op: nothing to build.

- :mod:`vssm.compat.mamba_ssm`: mamba_ssm's ``selective_scan_fn`` / ``selective_scan_ref``.
- :mod:`vssm.compat.vmamba`: VMamba's ``selective_scan_fn`` (csms6s.py), ``cross_scan_fn`` / ``cross_merge_fn``
  (csm_triton.py).
- :mod:`vssm.compat.kernels`: ``fwd`` / ``bwd`` of ``selective_scan_cuda_oflex``, ``selective_scan_cuda_core``
  and mamba_ssm's ``selective_scan_cuda``, argument for argument.
- :func:`install`: ``import selective_scan_cuda_oflex``, ``from mamba_ssm.ops.selective_scan_interface import
  selective_scan_fn``, ... resolve to those when the real modules are absent; :func:`uninstall` undoes it.
"""
from .importer import install, uninstall

__all__ = ["install", "uninstall"]

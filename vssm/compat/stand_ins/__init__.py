"""Files that :func:`vssm.compat.install` loads under the names of the compiled modules and packages they
stand in for (``selective_scan_cuda_oflex``, ``mamba_ssm``, ...). Import them by those names, after
``vssm.compat.install()``, not from here."""

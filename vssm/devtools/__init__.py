"""Developer tooling: timing models (``benchmark``), the compile check and resource table of the GPU kernels
(``kernel_resources``), and the one-command GPU check (``gpu_check``, run by ``scripts/gpu_check.sh``)."""

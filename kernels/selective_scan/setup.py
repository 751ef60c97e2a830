"""The optional CUDA selective-scan extension of vssm (module ``vssm_selective_scan_cuda``).

    pip install --no-build-isolation ./kernels/selective_scan               # from the repository root
    TORCH_CUDA_ARCH_LIST="8.6" MAX_JOBS=4 pip install --no-build-isolation ./kernels/selective_scan

No GPU is needed to build: the code is generated for TORCH_CUDA_ARCH_LIST (default "8.0;9.0;10.0;12.0+PTX":
A100, H100/H200, B200, RTX 50 series, and PTX that newer GPUs compile at load time; "8.0;9.0+PTX" with an
nvcc older than 12.8, which has no Blackwell targets). It needs nvcc of the CUDA major
version torch was built with, and the torch of the environment it is installed into (hence
--no-build-isolation).
"""
import glob
import os
import shutil
import sys


NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]  # also read by vssm/devtools/kernel_resources.py


def find_cuda_home():
    """A CUDA toolkit directory (bin/nvcc and include/cuda_runtime.h): $CUDA_HOME, $CUDA_PATH,
    /usr/local/cuda, or the one above the nvcc on PATH. torch's own guess takes the folder above
    nvcc, which is wrong when nvcc is a wrapper script (e.g. /usr/local/bin/nvcc)."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None]
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and \
                os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


BLACKWELL_NVCC = (12, 8)  # the first CUDA release with sm_100 and sm_120


def default_arch_list(cuda_home: str) -> str:
    """TORCH_CUDA_ARCH_LIST when unset: Ampere, Hopper and (with nvcc >= 12.8) Blackwell, plus PTX."""
    import re
    import subprocess
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True)
        found = re.search(r"release (\d+)\.(\d+)", out.stdout)
        version = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    except OSError:
        version = (0, 0)
    return "8.0;9.0;10.0;12.0+PTX" if version >= BLACKWELL_NVCC else "8.0;9.0+PTX"


def main():
    cuda_home = find_cuda_home()
    if cuda_home is None:
        sys.exit("vssm-selective-scan: no CUDA toolkit found (nvcc and cuda_runtime.h); install one or set CUDA_HOME")
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list(cuda_home)
    try:
        from setuptools import setup
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError:
        sys.exit("vssm-selective-scan: torch is not importable; install with "
                 "`pip install --no-build-isolation ./kernels/selective_scan` into the environment that has torch")
    here = os.path.dirname(os.path.abspath(__file__))
    sources = ["csrc/selective_scan.cpp"] + sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "scan_*.cu")))
    setup(
        name="vssm-selective-scan-cuda",
        version="0.1.0",
        description="CUDA selective-scan kernels for vssm (optional)",
        ext_modules=[CUDAExtension(
            name="vssm_selective_scan_cuda",
            sources=sources,
            extra_compile_args={"cxx": ["-O3", "-std=c++17"],
                                "nvcc": NVCC_FLAGS},
        )],
        cmdclass={"build_ext": BuildExtension},
    )


if __name__ == "__main__":
    main()

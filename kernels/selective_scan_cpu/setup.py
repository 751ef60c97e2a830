"""The compiled CPU selective-scan backend of vssm (module ``vssm_selective_scan_cpu``).

    pip install --no-build-isolation ./kernels/selective_scan_cpu       # from the repository root
    VSSM_CPU_ARCH=x86-64-v3 pip install --no-build-isolation ./kernels/selective_scan_cpu   # portable AVX2 build

Plain C++17 on ATen with OpenMP, built with the system compiler against the installed torch (hence
--no-build-isolation), for VSSM_CPU_ARCH (default ``native``: the machine that builds it, which is where
scripts/setup_env.sh runs it). The N = 1 kernels use explicit vectors (csrc/simd.h): AVX-512 when the target
has AVX512F/BW/VL/DQ, else AVX2 with FMA and F16C (``x86-64-v3``), else one float at a time (e.g. ``x86-64``);
the others are vectorised by the compiler.
"""
import os
import sys


def main():
    try:
        from setuptools import setup
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        sys.exit("vssm-selective-scan-cpu: torch is not importable; install with "
                 "`pip install --no-build-isolation ./kernels/selective_scan_cpu` into the environment that has torch")
    arch = os.environ.get("VSSM_CPU_ARCH", "native")
    flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math"]
    if arch:
        flags.append(f"-march={arch}")
    setup(
        name="vssm-selective-scan-cpu",
        version="0.1.0",
        description="Compiled CPU selective-scan kernels for vssm (optional)",
        ext_modules=[CppExtension(name="vssm_selective_scan_cpu",
                                  sources=["csrc/scan_cpu.cpp", "csrc/scan_cpu_fp32.cpp", "csrc/scan_cpu_fp16.cpp",
                                           "csrc/scan_cpu_bf16.cpp", "csrc/state_fusion_cpu.cpp",
                                           "csrc/depthwise_cpu.cpp"],
                                  extra_compile_args=flags, extra_link_args=["-fopenmp"])],
        cmdclass={"build_ext": BuildExtension},
    )


if __name__ == "__main__":
    main()

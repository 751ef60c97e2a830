"""Compile every GPU kernel of the project for sm_80 / sm_90 / sm_100 / sm_120 without a GPU, and read its resources.

Triton: every module of the package that defines ``@triton.jit`` kernels lists the launches its host
code can make in ``launch_configs()`` (recorded from that host code, see ``vssm.ops.kernel_launch``).
Each launch is specialised exactly as Triton's JIT does at launch time (argument alignment, unit
strides, constexprs, ``num_warps``; by the JIT's own binder, an internal of Triton 3.x) for
``GPUTarget("cuda", arch, 32)``, compiled with
``triton.compile``, and its PTX assembled again with ``ptxas -v`` for registers and spills (the JIT
does not keep that log) by the ptxas Triton picks for the architecture (Triton ships a newer one for
Blackwell, sm_100 / sm_120); shared memory is the kernel's metadata. The Blackwell architectures (B200:
sm_100, RTX 50: sm_120) are compiled at the shipped configurations only (``TAIL_ARCHS``: the long tail
stays on sm_80 / sm_90, to keep the compile time of CI in check). Needs the Triton compiler, so
``TRITON_INTERPRET`` must be off in the process.

CUDA extension: every ``kernels/selective_scan/csrc/*.cu`` compiled with ``nvcc -Xptxas -v`` for
each architecture, one row per kernel instantiation.

``python scripts/kernel_resources.py`` writes the table; ``tests/kernels`` and
``tests/ops/test_cuda_extension.py`` assert on it.
"""
import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ARCHS = (80, 90, 100, 120)  # A100, H100/H200, B200, RTX 50 series
TAIL_ARCHS = (80, 90)  # where every launch configuration, not only the shipped ones, is compiled
SM80_SHARED_LIMIT = 163 * 1024  # the most shared memory one block can have on an A100 (opt-in)
SHARED_LIMITS = {120: 99 * 1024}  # lower per-block limits of other architectures (RTX 50: 99 KiB, opt-in)
# Spills accepted on purpose: kernel name pattern -> (most bytes stored, why). Every other kernel must not spill.
ACCEPTED_SPILLS = {
    r"^void vssm_scan::backward_kernel<.*, 1, 64>\(": (
        16, "ptxas holds the N = 1 backward at 80 registers (occupancy) by spilling three loop-invariant offsets, "
            "stored once and reloaded once per 64-step tile; __launch_bounds__(64, 1) removes the spill but costs "
            "12-19 more registers per thread, i.e. fewer resident warps: to be decided by a GPU measurement"),
}
PACKAGE = Path(__file__).resolve().parents[1]  # vssm/
CUDA_SOURCES = PACKAGE.parent / "kernels" / "selective_scan" / "csrc"


@dataclass
class KernelResources:
    """What one compiled kernel uses on one architecture (bytes for spills and shared memory)."""
    source: str  # "triton" or "cuda"
    kernel: str
    label: str
    tier: str
    arch: int
    config: str = ""
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    shared: int = -1
    seconds: float = 0.0
    error: str = ""

    def problems(self) -> list:
        """Why this kernel is not fit to ship: a compile error, spills, or too much shared memory."""
        if self.error:
            return [f"does not compile: {self.error.strip().splitlines()[-1] if self.error.strip() else '?'}"]
        found = []
        if max(self.spill_stores, self.spill_loads) > self.accepted_spill()[0]:
            found.append(f"spills ({self.spill_stores} bytes stored, {self.spill_loads} loaded)")
        if self.shared > SM80_SHARED_LIMIT:
            found.append(f"{self.shared} bytes of shared memory, over sm_80's {SM80_SHARED_LIMIT}")
        elif self.shared > SHARED_LIMITS.get(self.arch, SM80_SHARED_LIMIT):
            found.append(f"{self.shared} bytes of shared memory, over sm_{self.arch}'s {SHARED_LIMITS[self.arch]}")
        return found

    def accepted_spill(self):
        """(most spill bytes accepted, why) for this kernel: (0, "") unless ``ACCEPTED_SPILLS`` names it."""
        for pattern, accepted in ACCEPTED_SPILLS.items():
            if re.search(pattern, self.kernel):
                return accepted
        return 0, ""

    def status(self) -> str:
        problems = self.problems()
        if problems:
            return "; ".join(problems)
        return "ok" + (" (accepted spill, see ACCEPTED_SPILLS)" if self.spill_stores or self.spill_loads else "")


# ---------------------------------------------------------------------------------------------- Triton


_JIT_DECORATOR = re.compile(r"^\s*@triton\.jit\b", re.MULTILINE)


def triton_modules() -> list:
    """Names of the package's modules that define Triton kernels (found by their ``@triton.jit``)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if _JIT_DECORATOR.search(path.read_text()):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def triton_launches(tier: str = "shipped") -> list:
    """The launches of every Triton module's ``launch_configs()`` of tier "shipped", or "all" of them."""
    launches = []
    for name in triton_modules():
        module = importlib.import_module(name)
        if not hasattr(module, "launch_configs"):
            raise RuntimeError(f"{name} defines Triton kernels but no launch_configs(); see vssm/ops/kernel_launch.py")
        launches += [launch for launch in module.launch_configs() if tier == "all" or launch.tier == tier]
    return launches


def _specialise(launch, arch: int):
    """(ASTSource, options, target, key): what Triton's JIT would compile for this launch on ``arch``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    kernel = launch.kernel
    if not isinstance(kernel, JITFunction):
        raise RuntimeError(f"{getattr(kernel, '__name__', kernel)} is not a compilable Triton kernel: "
                           "Triton's interpreter is on (TRITON_INTERPRET=1); compile checks need it off")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    from ..ops.kernel_launch import arch_options
    kwargs = dict(arch_options(arch), **launch.kwargs, debug=False)  # as vssm.ops.kernel_launch.launch on that GPU
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    key = (kernel.fn.__module__, kernel.fn.__qualname__, arch, repr(sorted(signature.items())),
           repr(sorted(constexprs.items())), repr(sorted(attrs.items())), repr(options))
    return ASTSource(kernel, signature, constexprs, attrs), options, target, key


def _ptxas(arch: int) -> str:
    """The ptxas Triton assembles ``arch`` with (its own Blackwell build for sm_100 and up)."""
    from triton.backends.nvidia.compiler import get_ptxas
    return get_ptxas(arch).path


def _ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers and spill bytes of a Triton PTX, assembled as Triton does (cached by the PTX's hash)."""
    import triton
    from triton.backends.nvidia.compiler import sm_arch_from_capability
    cache = Path(triton.knobs.cache.dir) / "vssm_ptxas"
    digest = hashlib.sha256(f"{arch}\n{ptx}".encode()).hexdigest()
    cached = cache / f"{digest}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([_ptxas(arch), "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"],
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed:\n{out.stderr[-2000:]}")
    usage = parse_ptxas_log(out.stderr)
    if len(usage) != 1:
        raise RuntimeError(f"expected one kernel in the ptxas log, got {len(usage)}:\n{out.stderr[-2000:]}")
    result = next(iter(usage.values()))[arch]
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result))
    return result


def _config(launch) -> str:
    blocks = [f"{k}={v}" for k, v in launch.kwargs.items() if k.startswith("BLOCK") or k in ("num_warps", "num_stages")]
    flags = [k for k, v in launch.kwargs.items() if v is True]
    return " ".join(blocks + flags)


def compile_triton(launch, arch: int) -> KernelResources:
    """Compile one launch for ``arch`` and read its resources; a compile error is reported, not raised."""
    import triton
    row = KernelResources("triton", launch.kernel.__name__, launch.label, launch.tier, arch, _config(launch))
    start = time.perf_counter()
    try:
        src, options, target, _ = _specialise(launch, arch)
        compiled = triton.compile(src, target=target, options=options.__dict__)
        usage = _ptxas_usage(compiled.asm["ptx"], arch)
        row.registers, row.spill_stores, row.spill_loads = usage["registers"], usage["spill_stores"], usage["spill_loads"]
        row.shared = compiled.metadata.shared
        if "num_warps" not in launch.kwargs:
            row.config = f"num_warps={compiled.metadata.num_warps} (default) {row.config}".strip()
    except Exception as error:  # noqa: BLE001 -- any compiler failure is a finding to report
        row.error = f"{type(error).__name__}: {error}"
    row.seconds = time.perf_counter() - start
    return row


def distinct_triton_launches(launches, arch: int) -> list:
    """The launches that compile to different kernels on ``arch`` (the first label of each is kept)."""
    seen, distinct = set(), []
    for launch in launches:
        key = _specialise(launch, arch)[3]
        if key not in seen:
            seen.add(key)
            distinct.append(launch)
    return distinct


# ---------------------------------------------------------------------------------------------- CUDA

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)a?'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas_log(log: str) -> dict:
    """``ptxas -v`` output -> {kernel: {arch: {registers, spill_stores, spill_loads, stack, shared}}}."""
    usage, current = {}, None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = usage.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {"shared": 0})
        elif current is not None and (m := _SPILLS.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := _USED.search(line)):
            current["registers"] = int(m.group(1))
            current["shared"] = int(m.group(2) or 0)
    return usage


def _demangle(names) -> dict:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return dict(zip(names, out.stdout.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def nvcc_flags() -> list:
    """The nvcc flags the extension is built with (``kernels/selective_scan/setup.py``)."""
    spec = importlib.util.spec_from_file_location("vssm_cuda_setup", CUDA_SOURCES.parent / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    return list(setup.NVCC_FLAGS)


def nvcc_command(nvcc: str, unit: Path, archs=ARCHS, output: str = os.devnull) -> list:
    """The build's nvcc command for one ``.cu`` of the extension and ``archs``, with ptxas's resource log."""
    from torch.utils.cpp_extension import include_paths
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return [nvcc, *nvcc_flags(), *gencode, "-Xptxas", "-v", *[f"-I{p}" for p in include_paths()],
            "-c", str(unit), "-o", output]


def cuda_resources(nvcc: str, archs=ARCHS, units=None, on_unit=None) -> list:
    """Compile every ``.cu`` of the extension for ``archs``; one row per kernel instantiation and arch."""
    rows = []
    for unit in units or sorted(CUDA_SOURCES.glob("*.cu")):
        start = time.perf_counter()
        out = subprocess.run(nvcc_command(nvcc, unit, archs), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if out.returncode != 0:
            rows += [KernelResources("cuda", unit.name, unit.name, "shipped", a, seconds=seconds,
                                     error=out.stderr[-3000:] or "nvcc failed") for a in archs]
        else:
            usage = parse_ptxas_log(out.stderr)
            names = _demangle(list(usage))
            for mangled, per_arch in usage.items():
                for arch, u in sorted(per_arch.items()):
                    rows.append(KernelResources("cuda", names[mangled], unit.name, "shipped", arch,
                                                registers=u["registers"], spill_stores=u["spill_stores"],
                                                spill_loads=u["spill_loads"], shared=u["shared"],
                                                seconds=seconds / max(1, len(usage) * len(per_arch))))
        if on_unit:
            on_unit(unit, rows)
    return rows


# ---------------------------------------------------------------------------------------------- report


def markdown_table(rows) -> str:
    """One row per compiled kernel and architecture."""
    lines = ["| source | kernel | configuration | launch parameters | sm | registers | spills st/ld (B) "
             "| shared (B) | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = r.status()
        spills = "-" if r.error else f"{r.spill_stores}/{r.spill_loads}"
        lines.append(f"| {r.source} | `{r.kernel}` | {r.label} | {r.config} | {r.arch} | "
                     f"{'-' if r.error else r.registers} | {spills} | {'-' if r.error else r.shared} | {status} |")
    accepted = {r.accepted_spill()[1] for r in rows if (r.spill_stores > 0 or r.spill_loads > 0) and not r.problems()}
    lines += [f"\nAccepted spill: {why}." for why in sorted(accepted)]
    return "\n".join(lines)


def save_json(rows, path):
    with open(path, "w") as f:
        json.dump([asdict(r) for r in rows], f, indent=1)


def load_json(path) -> list:
    with open(path) as f:
        return [KernelResources(**r) for r in json.load(f)]

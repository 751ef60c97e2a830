"""Every Triton kernel of vssm compiles for sm_80, sm_90, sm_100 (B200) and sm_120 (RTX 50) without a GPU, at the launch configurations its host
code records (each module's ``launch_configs()``), with no register spills and shared memory within an A100
block's limit (``vssm/devtools/kernel_resources.py``, ``scripts/kernel_resources.py``).

By default the configurations the models run ("shipped") are compiled; the long tail (every block-table entry,
constexpr-flag combination and dtype mix the host can emit; 960 kernels, about an hour on 2 cores) runs
with ``VSSM_KERNEL_TAIL=1``, for sm_80 and sm_90 (``kr.TAIL_ARCHS``; the newer architectures at the shipped
configurations). Compiles run in a subprocess: the test session runs Triton's interpreter instead of
its compiler when there is no GPU. Triton caches compiled kernels (``~/.triton/cache``), so a second run is fast.
"""
import ast
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="triton is not installed")

from vssm.devtools import kernel_resources as kr  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "kernel_resources.py")
TAIL = os.environ.get("VSSM_KERNEL_TAIL", "0") not in ("", "0")


def _compile(tmp_path, *args, timeout=1800):
    out_json = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, SCRIPT, "--only", "triton", "--json", str(out_json), *args],
                         capture_output=True, text=True, env=env, timeout=timeout)
    assert out_json.exists(), f"the compile script failed before writing its results:\n{out.stderr[-3000:]}"
    return kr.load_json(out_json), out


def _assert_fit(rows, out):
    bad = [f"sm_{r.arch} {r.kernel} ({r.label}; {r.config}): {'; '.join(r.problems())}" for r in rows if r.problems()]
    assert not bad, "kernels not fit to ship:\n" + "\n".join(bad)
    assert out.returncode == 0, out.stdout[-3000:]


def _jit_functions(tree):
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
            and any(ast.unparse(d).startswith("triton.jit") for d in node.decorator_list)}


def test_every_triton_module_lists_every_kernel_it_launches():
    """New Triton code cannot escape the compile check: every module with @triton.jit kernels defines
    launch_configs(), launches only through vssm.ops.kernel_launch.launch (whose calls it records), and records a
    shipped launch of each kernel it launches."""
    modules = kr.triton_modules()
    assert {"vssm.ops.selective_scan.fused_triton", "vssm.scans.sequence_triton"} <= set(modules)
    for name in modules:
        path = os.path.join(ROOT, *name.split(".")) + ".py"
        source = open(path).read()
        kernels = _jit_functions(ast.parse(source))
        bypass = [k for k in kernels if re.search(rf"\b{k}\[", source)]
        assert not bypass, f"{name} launches {bypass} with kernel[grid](...); use vssm.ops.kernel_launch.launch"
        launched = set(re.findall(r"\blaunch\(\s*(\w+)", source))
        assert launched, f"{name} has Triton kernels but launches none through vssm.ops.kernel_launch.launch"
        helpers = kernels - launched
        for helper in helpers:  # a Triton function that is not launched must serve the kernels that are
            assert re.search(rf"\b{helper}\b", source.replace(f"def {helper}(", "")), \
                f"{name}.{helper} is a Triton function that is neither launched through launch() nor used by a kernel"
        module = __import__(name, fromlist=["launch_configs"])
        assert hasattr(module, "launch_configs"), f"{name} defines Triton kernels but no launch_configs()"
        recorded = {(launch.kernel.__name__, launch.tier) for launch in module.launch_configs()}
        for kernel in launched:
            assert (kernel, "shipped") in recorded, f"{name}.launch_configs() records no shipped launch of {kernel}"


@pytest.mark.parametrize("arch", kr.ARCHS)
def test_shipped_configurations_compile_without_spills(tmp_path, arch):
    rows, out = _compile(tmp_path, "--arch", str(arch))
    kernels = {r.kernel for r in rows}
    assert {"_fwd_kernel", "_bwd_kernel", "_gather_rows_kernel"} <= kernels, out.stdout[-3000:]
    assert all(r.arch == arch and r.registers > 0 for r in rows if not r.error)
    _assert_fit(rows, out)


@pytest.mark.skipif(not TAIL, reason="the long tail of launch configurations compiles with VSSM_KERNEL_TAIL=1")
def test_every_launch_configuration_compiles(tmp_path):
    """Every configuration compiles and fits in shared memory; the shipped ones (listed first) do not spill,
    the tail's spills are listed (they are findings to weigh, not defects of what the models run)."""
    rows, out = _compile(tmp_path, "--tier", "all", "--jobs", str(os.cpu_count() or 1), timeout=4 * 3600)
    assert len(rows) > 900, out.stdout[-3000:]  # about 960 distinct kernels over both architectures
    tail_spills = [r for r in rows if r.tier == "tail" and r.problems() and not r.error
                   and r.shared <= kr.SM80_SHARED_LIMIT]
    print("spills in the tail:\n" + "\n".join(f"sm_{r.arch} {r.kernel} ({r.label}; {r.config}): "
                                                f"{'; '.join(r.problems())}" for r in tail_spills))
    bad = [f"sm_{r.arch} {r.kernel} ({r.label}; {r.config}): {'; '.join(r.problems())}" for r in rows
           if r.problems() and r not in tail_spills]
    assert not bad, "kernels that do not compile, spill in a shipped configuration or overflow shared memory:\n" + \
        "\n".join(bad)


TOY_KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def spilling(x_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(x_ptr + offs, x - tl.sum(x, 0))  # 256 values per thread stay live across the sum


@triton.jit
def broken(x_ptr, BLOCK: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK), undefined_name)
'''


def test_the_check_reports_spills_and_compile_errors(tmp_path):
    """The resource reading can fail: a kernel that must spill is reported with its spill bytes, a broken one
    with its compile error (and the script exits 1)."""
    (tmp_path / "toy_kernels.py").write_text(TOY_KERNELS)
    code = textwrap.dedent("""
        import json, sys, torch, toy_kernels
        from vssm.ops.kernel_launch import Launch
        from vssm.devtools import kernel_resources as kr
        x = torch.empty(8192, device="meta")
        rows = [kr.compile_triton(Launch(toy_kernels.spilling, (1,), (x,), dict(BLOCK=8192, num_warps=1)), 80),
                kr.compile_triton(Launch(toy_kernels.broken, (1,), (x,), dict(BLOCK=16)), 90)]
        print(json.dumps([[r.spill_stores, r.spill_loads, r.error, r.problems()] for r in rows]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (stores, loads, error, problems), (_, _, broken_error, broken_problems) = json.loads(out.stdout.splitlines()[-1])
    assert stores > 0 and loads > 0 and not error and problems[0].startswith("spills")
    assert "undefined_name" in broken_error and broken_problems[0].startswith("does not compile")


def test_ptxas_log_parsing():
    log = textwrap.dedent("""\
        ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
        ptxas info    : Function properties for _Z3fooPf
            16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
        ptxas info    : Used 64 registers, used 1 barriers, 2048 bytes smem, 380 bytes cmem[0]
        ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90a'
        ptxas info    : Function properties for _Z3fooPf
            0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 40 registers, used 0 barriers
        """)
    usage = kr.parse_ptxas_log(log)
    assert usage == {"_Z3fooPf": {
        80: {"registers": 64, "spill_stores": 8, "spill_loads": 4, "stack": 16, "shared": 2048},
        90: {"registers": 40, "spill_stores": 0, "spill_loads": 0, "stack": 0, "shared": 0}}}
    row = kr.KernelResources("cuda", "foo", "foo.cu", "shipped", 80, registers=64, spill_stores=8, spill_loads=4,
                             shared=200 * 1024)
    assert row.problems() == ["spills (8 bytes stored, 4 loaded)",
                              f"{200 * 1024} bytes of shared memory, over sm_80's {kr.SM80_SHARED_LIMIT}"]
    # the one accepted spill is bounded: more bytes than accepted, or the same spill in another kernel, fail
    name = "void vssm_scan::backward_kernel<float, float, 1, 64>(vssm_scan::ScanParams)"
    limit = kr.ACCEPTED_SPILLS[r"^void vssm_scan::backward_kernel<.*, 1, 64>\("][0]
    assert kr.KernelResources("cuda", name, "", "", 80, spill_stores=12, spill_loads=12).problems() == []
    assert kr.KernelResources("cuda", name, "", "", 80, spill_stores=limit + 4, spill_loads=4).problems()
    assert kr.KernelResources("cuda", name.replace(", 1, 64>", ", 4, 32>"), "", "", 80, spill_stores=4,
                              spill_loads=4).problems()

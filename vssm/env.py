"""The environment report to paste into a bug report: ``python -m vssm.env`` (Markdown) or ``--json``.

It lists the versions of Python and of the packages vssm uses (torch and its CUDA build, triton, timm, the
OpenMMLab stack, onnx / onnxruntime, ...), the CPU (model, cores, instruction sets such as AVX2 / AVX-512 /
AMX, the kernels torch picked) and CUDA devices (compute capability, memory), every selective-scan backend of
``vssm.ops.selective_scan.BACKENDS`` on each device (available or why not, and tiny fp32 parity checks of its
outputs and gradients against ``naive``, for the sequence entry ``selective_scan`` and the map entry
``selective_scan_map``), and the compiled extensions (vssm's own ``vssm_*`` modules and
mmcv's ops) with the GPU architectures their embedded CUDA code was built for, read from the fat-binary
headers of the shared library (no CUDA toolkit needed). The exit status is 1 when an available backend
fails its parity check.
"""
import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import mmap
import os
import platform
import pkgutil
import struct
import subprocess
import sys

import torch

PACKAGES = ("torch", "torchvision", "triton", "timm", "numpy", "pillow", "einops", "fvcore", "yacs", "mmengine", "mmcv",
            "mmdet", "mmsegmentation", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "openvino", "grad-cam",
            "scikit-image", "tifffile", "mamba-ssm")
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST", "TRITON_INTERPRET", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS")
# instruction sets worth knowing for CPU kernels, as /proc/cpuinfo names them (x86 "flags", Arm "Features")
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimdhp", "asimddp", "sve",
             "sve2", "bf16", "i8mm", "sme")
PARITY_TOLERANCE = 1e-4  # max |backend - naive| / max |naive| per tensor, fp32


# ---- versions ---------------------------------------------------------------------------------------------
def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision(folder: str):
    """Short commit of the checkout holding ``folder`` (with "+modified" when it has changes), or None."""
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+modified" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cudnn_version():
    """cuDNN's version as text: its integer is major*10000 + minor*100 + patch from cuDNN 9, major*1000 before."""
    if not torch.backends.cudnn.is_available():
        return None
    v = torch.backends.cudnn.version()
    if v is None:
        return None
    return f"{v // 10000}.{v % 10000 // 100}.{v % 100}" if v >= 90000 else f"{v // 1000}.{v % 1000 // 100}.{v % 100}"


def software() -> dict:
    import vssm
    folder = os.path.dirname(os.path.abspath(vssm.__file__))
    torch_build = {"cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
                   "cudnn": _cudnn_version(),
                   "debug": torch.version.debug, "threads": torch.get_num_threads()}
    providers = None
    if importlib.util.find_spec("onnxruntime") is not None:
        try:
            import onnxruntime
            providers = onnxruntime.get_available_providers()
        except Exception as e:  # noqa: BLE001 - a broken install is worth reporting, not raising
            providers = [f"error: {type(e).__name__}: {e}"]
    return {"python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
            "platform": platform.platform(), "libc": " ".join(platform.libc_ver()).strip() or None,
            "vssm": {"version": vssm.__version__, "path": folder, "git": _git_revision(folder)},
            "packages": {name: torch.__version__ if name == "torch" else _version(name) for name in PACKAGES},
            "torch_build": torch_build,
            "onnxruntime_providers": providers,
            "environment": {k: os.environ[k] for k in sorted(os.environ) if k in ENV_VARS or k.startswith("VSSM_")}}


# ---- devices ----------------------------------------------------------------------------------------------
def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo (Linux), else {}."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _memory_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu() -> dict:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else None
    return {"model": info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine(),
            "architecture": platform.machine(), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "memory_gib": _memory_gib(), "isa": [f for f in CPU_FLAGS if f in flags],
            "torch_cpu_capability": capability, "torch_threads": torch.get_num_threads()}


def _driver_version():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def torch_cuda_archs() -> list:
    """The GPU architectures torch itself was built for (e.g. ["sm_80", "sm_90"]), also without a GPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_arch_list()
    flags = getattr(torch._C, "_cuda_getArchFlags", None)
    return (flags() or "").split() if flags is not None and torch.version.cuda else []


def cuda() -> dict:
    report = {"available": torch.cuda.is_available(), "torch_built_for": torch_cuda_archs(), "devices": [],
              "driver": None}
    if report["available"]:
        report["driver"] = _driver_version()
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            report["devices"].append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                                      "memory_gib": round(p.total_memory / 2**30, 1),
                                      "multiprocessors": p.multi_processor_count})
    mps = getattr(torch.backends, "mps", None)
    report["mps"] = bool(mps is not None and mps.is_available())
    return report


# ---- scan backends ----------------------------------------------------------------------------------------
def _parity_inputs(device):
    g = torch.Generator().manual_seed(0)
    batch, K, D, N, L = 2, 2, 4, 4, 37

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()

    inputs = {"u": rand(batch, K * D, L), "delta": rand(batch, K * D, L, scale=0.5),
              "A": (-torch.exp(torch.randn(K * D, N, generator=g) * 0.5)).to(device).requires_grad_(),
              "B": rand(batch, K, N, L), "C": rand(batch, K, N, L), "D": rand(K * D), "z": rand(batch, K * D, L),
              "delta_bias": rand(K * D, scale=0.5)}
    weights = tuple(torch.randn(*shape, generator=g).to(device) for shape in ((batch, K * D, L), (batch, K * D, N)))
    return inputs, weights


def _scan_outputs(backend: str, device) -> dict:
    """y, the last state and the gradients of every input of a small grouped scan with D, z and softplus."""
    from .ops.selective_scan import selective_scan
    inputs, (wy, ws) = _parity_inputs(device)
    y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=backend)
    grads = torch.autograd.grad((y.float() * wy).sum() + (last.float() * ws).sum(), list(inputs.values()))
    out = {"y": y, "last_state": last}
    out.update({f"d{name}": grad for name, grad in zip(inputs, grads)})
    return {k: v.detach().float().cpu() for k, v in out.items()}


def _map_inputs(device, per_image: bool):
    from .scans import cross_orders
    g = torch.Generator().manual_seed(1 + per_image)
    batch, H, W, K, D, N = 2, 5, 7, 4, 4, 4
    L = H * W
    if per_image:  # a scan order per image, as QuadMamba's quadtree
        orders = torch.stack([torch.stack([torch.randperm(L, generator=g) for _ in range(K)]) for _ in range(batch)])
    else:
        orders = cross_orders(H, W)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()

    inputs = {"x": rand(batch, L, D), "delta": rand(batch, L, K, D, scale=0.5),
              "A": (-torch.exp(torch.randn(K * D, N, generator=g) * 0.5)).to(device).requires_grad_(),
              "B": rand(batch, L, K, N), "C": rand(batch, L, K, N), "D": rand(K * D),
              "delta_bias": rand(K * D, scale=0.5)}
    return inputs, orders.to(device), torch.randn(batch, L, D, generator=g).to(device)


def _map_outputs(backend: str, device) -> dict:
    """y and the gradients of every input of small map scans (cross orders, and per-image orders) with D, bias and
    softplus; keys ``cross.y``, ``per_image.dx``, ..."""
    from .ops.selective_scan import selective_scan_map
    out = {}
    for per_image in (False, True):
        inputs, orders, wy = _map_inputs(device, per_image)
        y = selective_scan_map(**inputs, orders=orders, delta_softplus=True, backend=backend)
        grads = torch.autograd.grad((y.float() * wy).sum(), list(inputs.values()))
        prefix = "per_image." if per_image else "cross."
        out[prefix + "y"] = y
        out.update({f"{prefix}d{name}": grad for name, grad in zip(inputs, grads)})
    return {k: v.detach().float().cpu() for k, v in out.items()}


ENTRIES = {"sequence": _scan_outputs, "map": _map_outputs}  # the scan's two entries, as the parity check runs them


def parity(backend: str, device, reference: dict = None, entry: str = "sequence") -> dict:
    """Max abs and relative (to the reference's max) error of ``backend``'s outputs and gradients vs naive, for the
    sequence entry (``selective_scan``) or the map entry (``selective_scan_map``)."""
    outputs = ENTRIES[entry]
    reference = reference if reference is not None else outputs("naive", device)
    try:
        got = outputs(backend, device)
    except Exception as e:  # noqa: BLE001 - the failure itself is the report
        return {"status": "FAIL", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    worst = {"max_abs": 0.0, "max_rel": 0.0, "worst": None}
    for name, ref in reference.items():
        err = (got[name] - ref).abs().max().item() if got[name].shape == ref.shape else float("inf")
        err = float("inf") if err != err else err  # NaN: the worst possible
        rel = err / max(ref.abs().max().item(), 1e-12)
        if rel > worst["max_rel"] or worst["worst"] is None:
            worst = {"max_abs": err, "max_rel": rel, "worst": name}
    worst["status"] = "PASS" if worst["max_rel"] <= PARITY_TOLERANCE else "FAIL"
    return worst


def scan_backends(devices=None, progress=None) -> list:
    """One row per (device, backend): availability (or why not), ``auto``'s choice, and the parity checks of the
    sequence entry (``parity``) and of the map entry (``map_parity``)."""
    ops = importlib.import_module("vssm.ops.selective_scan")  # the module (vssm.ops.selective_scan is the function)
    devices = devices or (["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())])
    rows = []
    for device in map(torch.device, devices):
        available = ops.available_backends(device)
        auto = ops.resolve_backend("auto", device)
        references = {}
        for backend in (b for b in ops.BACKENDS if b != "auto"):
            row = {"device": str(device), "backend": backend, "available": backend in available,
                   "auto": backend == auto}
            if backend not in available:
                try:
                    ops.resolve_backend(backend, device)
                    row["reason"] = f"not offered on {device.type}"
                except (RuntimeError, ValueError, ImportError) as e:
                    row["reason"] = str(e).removeprefix("selective_scan: ")
            elif backend == "naive":
                row["parity"] = row["map_parity"] = {"status": "reference"}
            else:
                if progress is not None:
                    progress(f"checking scan backend {backend} on {device} against naive ...")
                for entry, key in (("sequence", "parity"), ("map", "map_parity")):
                    if entry not in references:
                        references[entry] = ENTRIES[entry]("naive", device)
                    row[key] = parity(backend, device, references[entry], entry)
            rows.append(row)
    return rows


# ---- compiled extensions ----------------------------------------------------------------------------------
FATBIN_MAGIC = 0xBA55ED50
_PTX, _CUBIN_KINDS = 1, (2, 0x10)


def cuda_architectures(path: str) -> dict:
    """The GPU code embedded in a shared library: {"sass": [80, 90, ...], "ptx": [90, ...]} (compute capability x 10).

    Read from the fat-binary containers in the file (a 16-byte header: magic 0xBA55ED50, version, header size,
    size; then entries of: kind (1 PTX, 2 cubin), header size, payload size, ..., SM architecture at byte 28).
    Empty lists for a library without CUDA code.
    """
    sass, ptx = set(), set()
    magic = struct.pack("<I", FATBIN_MAGIC)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return {"sass": [], "ptx": []}
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            pos = data.find(magic)
            while pos != -1 and pos + 16 <= size:
                version, header_size, fat_size = struct.unpack_from("<HHQ", data, pos + 4)
                entry, end = pos + header_size, pos + header_size + fat_size
                if version == 1 and header_size == 16 and end <= size:
                    while entry + 32 <= end:
                        kind, _, entry_size, payload = struct.unpack_from("<HHIQ", data, entry)
                        arch = struct.unpack_from("<I", data, entry + 28)[0]
                        if entry_size == 0:
                            break
                        if kind == _PTX:
                            ptx.add(arch)
                        elif kind in _CUBIN_KINDS:
                            sass.add(arch)
                        entry += entry_size + payload
                    pos = data.find(magic, max(end, pos + 4))
                else:
                    pos = data.find(magic, pos + 4)
    return {"sass": sorted(sass), "ptx": sorted(ptx)}


def runs_on(archs: dict, capability: str) -> bool:
    """Whether code built for ``archs`` runs on a GPU of ``capability`` ("8.6"): a cubin of the same major
    version and no higher minor, or PTX of no higher version (compiled by the driver at load time)."""
    major, minor = (int(x) for x in capability.split("."))
    target = 10 * major + minor
    return any(a // 10 == major and a <= target for a in archs["sass"]) or any(a <= target for a in archs["ptx"])


def _extension_modules() -> list:
    """Names of vssm's compiled modules (top-level ``vssm_*``, found on the path or already loaded) and mmcv's ops."""
    names = {m.name for m in pkgutil.iter_modules() if m.name.startswith("vssm_")}
    names |= {n for n, m in list(sys.modules.items()) if n.startswith("vssm_") and
              str(getattr(m, "__file__", "") or "").endswith((".so", ".pyd"))}
    names.add("vssm_selective_scan_cuda")  # always listed, built or not
    if importlib.util.find_spec("mmcv") is not None:
        names.add("mmcv._ext")
    return sorted(names)


def extensions(capabilities=()) -> list:
    """Each compiled extension: where it is, whether it loads, and the GPU architectures it holds code for."""
    rows = []
    for name in _extension_modules():
        row = {"module": name, "file": None, "loads": None, "error": None, "sass": [], "ptx": []}
        module = sys.modules.get(name)
        try:
            spec = importlib.util.find_spec(name) if module is None else module.__spec__
        except (ImportError, ValueError):
            spec = None
        row["file"] = getattr(module, "__file__", None) or (spec.origin if spec is not None else None)
        if row["file"] is None:
            rows.append(row)
            continue
        try:
            importlib.import_module(name)
            row["loads"] = True
        except Exception as e:  # noqa: BLE001 - e.g. an undefined symbol from another torch version
            row["loads"], row["error"] = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if os.path.isfile(row["file"]) and row["file"].endswith((".so", ".pyd")):
            row.update(cuda_architectures(row["file"]))
            if row["sass"] or row["ptx"]:
                row["runs_on_devices"] = {c: runs_on(row, c) for c in capabilities}
        rows.append(row)
    return rows


# ---- the report -------------------------------------------------------------------------------------------
def collect(devices=None, progress=None) -> dict:
    report = software()
    report["cpu"], report["cuda"] = cpu(), cuda()
    report["scan_backends"] = scan_backends(devices, progress)
    report["extensions"] = extensions([d["capability"] for d in report["cuda"]["devices"]])
    report["families"] = families()
    return report


def families() -> dict:
    """The registered model families (plugins of VSSM_PLUGINS included) and the plugins that failed to load."""
    from .models import families as registered, plugin_errors
    return {"registered": [{"name": f.name, "title": f.title, "module": f.module, "sizes": sorted(f.sizes)}
                           for f in registered()],
            "plugin_errors": plugin_errors()}


def _sm(values, prefix="sm_"):
    return ", ".join(f"{prefix}{v}" for v in values) or "-"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: dict) -> str:
    v, b = report["vssm"], report["torch_build"]
    lines = ["## vssm environment", "",
             f"- vssm {v['version']}" + (f" (git {v['git']})" if v["git"] else "") + f" at `{v['path']}`",
             f"- Python {report['python']}", f"- {report['platform']}" + (f", {report['libc']}" if report["libc"]
                                                                          else ""), "",
             "| package | version |", "|---|---|"]
    for name, version in report["packages"].items():
        if version is None and name in ("onnxruntime-gpu", "mamba-ssm"):
            continue  # optional alternatives: listed only when installed
        extra = ""
        if name == "torch":
            extra = f" (CUDA {b['cuda'] or 'none'}" + (f", cuDNN {b['cudnn']}" if b["cudnn"] else "") + \
                    (f", ROCm {b['hip']}" if b["hip"] else "") + ")"
        elif name in ("onnxruntime", "onnxruntime-gpu") and version and report["onnxruntime_providers"]:
            extra = f" ({', '.join(report['onnxruntime_providers'])})"
        lines.append(f"| {name} | {version or 'not installed'}{_cell(extra)} |")
    c = report["cpu"]
    lines += ["", "### Devices", "",
              f"- CPU: {c['model']} ({c['architecture']}), {c['logical_cores']} logical cores ({c['usable_cores']} "
              f"usable), {c['memory_gib']} GiB; ISA: {', '.join(c['isa']) or 'unknown'}; torch kernels: "
              f"{c['torch_cpu_capability']}, {c['torch_threads']} threads"]
    g = report["cuda"]
    built = ", ".join(g["torch_built_for"]) or "-"
    if not g["available"]:
        lines.append(f"- CUDA: not available (torch built for CUDA {b['cuda'] or 'none'}: {built})")
    else:
        lines.append(f"- CUDA {b['cuda']}, driver {g['driver'] or 'unknown'}, torch built for {built}")
        for d in g["devices"]:
            lines.append(f"  - cuda:{d['index']}: {d['name']}, compute capability {d['capability']}, "
                         f"{d['memory_gib']} GiB, {d['multiprocessors']} SMs")
    if g["mps"]:
        lines.append("- Apple MPS: available")
    lines += ["", f"### Scan backends (parity vs `naive`: fp32 outputs and gradients, max error relative to the "
              f"largest value, pass <= {PARITY_TOLERANCE:g})", "",
              "| device | backend | available | sequence parity | max abs error | max rel error | map parity | "
              "max abs error | max rel error | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["scan_backends"]:
        cells, notes = [], [r["reason"]] if r.get("reason") else []
        for key, label in (("parity", "sequence"), ("map_parity", "map")):
            p = r.get(key, {})
            cells += [p.get("status", "-")] + ([f"{p['max_abs']:.2e}", f"{p['max_rel']:.2e}"] if "max_abs" in p
                                                else ["", ""])
            if p.get("error") or p.get("worst"):
                notes.append(f"{label}: " + (p.get("error") or f"worst {p['worst']}"))
        avail = ("yes" + (" (auto)" if r["auto"] else "")) if r["available"] else "no"
        lines.append(f"| {r['device']} | {r['backend']} | {avail} | {' | '.join(cells)} | {_cell('; '.join(notes))} |")
    lines += ["", "### Compiled extensions", "", "| module | file | loads | GPU code (cubin) | PTX | note |",
              "|---|---|---|---|---|---|"]
    for e in report["extensions"]:
        if e["file"] is None:
            lines.append(f"| {e['module']} | not built | | | | |")
            continue
        note = e["error"] or ""
        missing = [c for c, ok in e.get("runs_on_devices", {}).items() if not ok]
        if missing:
            note += f" no code for this GPU (compute capability {', '.join(missing)})"
        if e["loads"] and not e["sass"] and not e["ptx"]:
            note += " CPU code only"
        lines.append(f"| {e['module']} | `{e['file']}` | {'yes' if e['loads'] else 'no'} | {_sm(e['sass'])} | "
                     f"{_sm(e['ptx'], 'compute_')} | {_cell(note.strip())} |")
    lines += ["", "### Model families", "", "| family | module | sizes |", "|---|---|---|"]
    lines += [f"| {f['title']} | `{f['module']}` | {', '.join(f['sizes'])} |" for f in report["families"]["registered"]]
    lines += [f"- VSSM_PLUGINS entry `{entry}` could not be loaded: {_cell(why)}"
              for entry, why in report["families"]["plugin_errors"].items()]
    env = report["environment"]
    lines += ["", "### Environment variables", ""]
    lines += [f"- `{k}={val}`" for k, val in env.items()] or ["- (none of " + ", ".join(ENV_VARS) + ", VSSM_*)"]
    return "\n".join(lines) + "\n"


def failed_backends(report: dict) -> list:
    failed = []
    for r in report["scan_backends"]:
        for key, label in (("parity", ""), ("map_parity", " (map entry)")):
            if r.get(key, {}).get("status") == "FAIL":
                failed.append(f"{r['backend']}{label} on {r['device']}")
    return failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m vssm.env", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    p.add_argument("--device", nargs="+", help="devices whose scan backends are checked (default: cpu and every GPU)")
    args = p.parse_args(argv)
    for name in args.device or ():
        try:
            device = torch.device(name)
        except RuntimeError as e:
            p.error(f"--device {name!r}: {e}")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            p.error(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    report = collect(args.device, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(report, indent=2) if args.json else to_markdown(report), end="\n" if args.json else "")
    failed = failed_backends(report)
    if failed:
        print(f"error: parity check failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile every GPU kernel of vssm for sm_80, sm_90, sm_100 and sm_120 (no GPU needed) and tabulate its resources.

    python scripts/kernel_resources.py --out kernel_resources.md            # shipped configurations
    python scripts/kernel_resources.py --tier all --jobs 8 --out all.md     # every launch the host can make
    python scripts/kernel_resources.py --only cuda --arch 80                # the CUDA extension only

Triton kernels: each launch configuration that the modules' ``launch_configs()`` record from their
host code, specialised as Triton's JIT would, compiled with ``triton.compile`` for the target; the
CUDA extension: every ``.cu`` with ``nvcc -Xptxas -v`` (skipped with a reason when nvcc is missing).
Prints one line per kernel, then writes a Markdown table (registers, spill bytes, shared memory per
configuration and architecture) and optionally JSON. With ``--tier all``, the long tail is compiled for
``kr.TAIL_ARCHS`` (sm_80, sm_90) and the shipped configurations for every architecture. Exits 1 when a kernel fails to compile, spills
or needs more shared memory than an A100 block can have. See ``vssm/devtools/kernel_resources.py``.
"""
import argparse
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # the compiler, not the interpreter: before Triton is imported


from vssm.devtools import kernel_resources as kr  # noqa: E402  (after TRITON_INTERPRET is cleared)

_JOBS = []  # (launch, arch) to compile, shared with forked workers


def _compile(index):
    launch, arch = _JOBS[index]
    return kr.compile_triton(launch, arch)


def progress(done, total, start, row):
    rate = done / max(time.time() - start, 1e-9)
    eta = (total - done) / rate if rate else 0
    status = row.status()
    print(f"[{done}/{total}, {rate * 60:.0f}/min, eta {eta / 60:.1f} min] sm_{row.arch} {row.kernel} "
          f"({row.label}; {row.config}): regs {row.registers}, spills {row.spill_stores}/{row.spill_loads} B, "
          f"shared {row.shared} B, {row.seconds:.1f} s: {status}", flush=True)


def triton_rows(tier, archs, jobs):
    print(f"recording the Triton launches of {', '.join(kr.triton_modules())} ...", flush=True)
    launches = kr.triton_launches(tier)
    shipped = [launch for launch in launches if launch.tier == "shipped"]
    _JOBS.clear()
    for arch in archs:  # the long tail on TAIL_ARCHS only: the newer architectures at what the models run
        chosen = launches if arch in kr.TAIL_ARCHS else shipped
        _JOBS.extend((launch, arch) for launch in kr.distinct_triton_launches(chosen, arch))
    print(f"{len(launches)} launches, {len(_JOBS)} distinct kernels to compile for sm_{', sm_'.join(map(str, archs))}",
          flush=True)
    rows, start = [], time.time()
    if jobs > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for row in pool.imap(_compile, range(len(_JOBS))):
                rows.append(row)
                progress(len(rows), len(_JOBS), start, row)
    else:
        for index in range(len(_JOBS)):
            rows.append(_compile(index))
            progress(len(rows), len(_JOBS), start, rows[-1])
    return rows


def cuda_rows(archs):
    sys.path.insert(0, str(kr.CUDA_SOURCES.parent))
    from setup import find_cuda_home
    home = find_cuda_home()
    if home is None:
        print("CUDA extension: skipped, no CUDA toolkit (nvcc) found", flush=True)
        return []
    units = sorted(kr.CUDA_SOURCES.glob("*.cu"))
    print(f"compiling the CUDA extension's {len(units)} units with {home}/bin/nvcc ...", flush=True)

    def report(unit, rows):
        mine = [r for r in rows if r.label == unit.name]
        bad = [p for r in mine for p in r.problems()]
        print(f"  {unit.name}: {len(mine)} kernel(s) x arch, registers {min(r.registers for r in mine)}.."
              f"{max(r.registers for r in mine)}: {'; '.join(bad) or 'ok'}", flush=True)

    return kr.cuda_resources(os.path.join(home, "bin", "nvcc"), archs, units, on_unit=report)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tier", choices=["shipped", "all"], default="shipped",
                   help="Triton launches: the models' configurations (default) or everything the host can make")
    p.add_argument("--arch", type=int, nargs="+", default=list(kr.ARCHS), choices=kr.ARCHS)
    p.add_argument("--only", choices=["triton", "cuda"], help="compile only these kernels")
    p.add_argument("--jobs", type=int, default=1, help="parallel Triton compiles")
    p.add_argument("--out", help="Markdown table to write")
    p.add_argument("--json", help="JSON of the rows to write")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    rows = []
    if args.only != "cuda":
        rows += triton_rows(args.tier, args.arch, args.jobs)
    if args.only != "triton":
        rows += cuda_rows(args.arch)
    table = kr.markdown_table(rows)
    bad = [r for r in rows if r.problems()]
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# Kernel resources ({args.tier} Triton configurations)\n\n{table}\n")
        print(f"wrote {args.out}")
    if args.json:
        kr.save_json(rows, args.json)
        print(f"wrote {args.json}")
    if not args.out:
        print(table)
    print(f"{len(rows)} kernels compiled, {len(bad)} with problems" +
          "".join(f"\n  sm_{r.arch} {r.kernel} ({r.label}): {'; '.join(r.problems())}" for r in bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check's Markdown report and verdicts, from the figures its steps wrote (``gpu_check.json``)."""

# VMamba's published throughput (A100, batch 128 at 224; img/s) and Swin-T's in the same table, which scales
# them to the GPU measured here: target x published VMamba-T x (Swin-T measured / Swin-T published).
PUBLISHED = {"vmamba": {"inference": 1686, "train": 571}, "swin": {"inference": 1244, "train": 987}}
TARGETS = {"inference": 1.15, "train": 1.10}
SCAN_TARGETS = {"triton": 1.0, "cuda": 1.2}  # forward+backward speed vs mamba_ssm at N = 1, L = 3136
SWIN = "swin_tiny_patch4_window7_224"


def parity_failures(parity: dict) -> list:
    return [r for r in (parity or {}).get("rows", []) if r.get("status") == "FAILED"]


def parity_rows(steps: dict) -> list:
    """The rows of both parity steps (the Triton and PyTorch backends; the CUDA extension once built)."""
    return [r for name in ("parity", "parity (cuda extension)")
            for r in ((steps.get(name) or {}).get("data") or {}).get("rows", [])]


def problems(steps: dict) -> list:
    """What makes the check fail: a parity failure, no parity results, a training run short of the CPU accuracy."""
    parity = (steps.get("parity") or {}).get("data")
    failed = parity_failures({"rows": parity_rows(steps)})
    found = [f"{len(failed)} parity failure(s)"] if failed else []
    if parity is None:
        found.append("the parity step produced no results")
    training = (steps.get("training") or {}).get("data") or {}
    if training.get("verdict") == "NOT reached":
        found.append(f"the training run reached {training['final_acc1']:.2f}, below {training['required_acc1']:.2f}")
    return found


def scan_targets(bench: dict) -> list:
    """(backend, speed-up over mamba_ssm forward+backward, target, met) at VMamba-T's first stage."""
    found = []
    for row in (bench or {}).get("rows", []):
        if row["L"] == 3136 and row["backend"] in SCAN_TARGETS and "mamba_ssm_fwd_bwd_ms" in row:
            ratio = row["mamba_ssm_fwd_bwd_ms"] / row["fwd_bwd_ms"]
            found.append((row["backend"], ratio, SCAN_TARGETS[row["backend"]], ratio >= SCAN_TARGETS[row["backend"]]))
    return found


def model_targets(throughput: dict) -> list:
    """(precision, mode, kind, VMamba-T img/s, scaled target img/s, met) for every setting both were measured in."""
    rows = {(r["model"], r["precision"], r["mode"]): r for r in (throughput or {}).get("rows", [])}
    found = []
    for (model, precision, mode), row in rows.items():
        if model != "vmamba_tiny_s1l8":
            continue
        swin = rows.get((SWIN, precision, mode), {})
        for kind in ("inference", "train"):
            ours, ref = row.get(kind, {}).get("images_per_s"), swin.get(kind, {}).get("images_per_s")
            if ours and ref:
                scale = ref / PUBLISHED["swin"][kind]
                target = TARGETS[kind] * PUBLISHED["vmamba"][kind] * scale
                found.append((precision, mode, kind, ours, target, ours >= target))
    return found


def _table(header, rows) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _fmt(value, digits=1):
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else (value if value is not None else "-")


def markdown(result: dict) -> str:
    dry, steps = result["dry"], result["steps"]
    data = {name: step.get("data") for name, step in steps.items()}
    env = data.get("environment") or {}
    lines = [f"# GPU check{' (DRY RUN)' if dry else ''}", ""]
    if dry:
        lines += ["**Dry run on the CPU at tiny shapes: every step ran, no figure below is a GPU measurement.**", ""]
    lines += [f"{env.get('gpu', env.get('device', '?'))} ({env.get('capability', '-')}), started {result['started']}, "
              f"{result['seconds']:.0f} s of a {result['budget']} s budget. Verdict: **{result['verdict']}**.", ""]

    lines += ["## Steps and time budget", ""]
    lines += _table(["step", "status", "budget s", "used s", "note"],
                    [(name, s["status"], _fmt(s.get("budget"), 0), _fmt(s.get("seconds"), 0), s.get("reason", ""))
                     for name, s in steps.items()])

    lines += ["", "## Environment", ""]
    versions = env.get("versions", {})
    lines += [f"- {k}: {v if v is not None else 'not installed'}" for k, v in versions.items()]
    if env.get("copy_gb_per_s"):
        lines += [f"- device copy bandwidth: {env['copy_gb_per_s']:.0f} GB/s (read + write)"]
    build = steps.get("cuda extension build", {})
    lines += [f"- CUDA extension: {build.get('status', '-')}{': ' + build['reason'] if build.get('reason') else ''}"]

    rows = parity_rows(steps)
    failures, skipped = parity_failures({"rows": rows}), [r for r in rows if r["status"] == "skipped"]
    lines += ["", "## Scan parity (every backend against the naive fp32 loop)", "",
              f"{len(failures)} failure(s), {len(skipped)} skipped, in {len(rows)} checks; ratio: the worst error "
              "over its tolerance (<= 1 passes).", ""]
    lines += _table(["layout", "L", "N", "dtype", "backend", "status", "worst", "ratio", "note"],
                    [(r["layout"], r["L"], r["N"], r["dtype"], r["backend"], r["status"], r.get("name", "-"),
                      _fmt(r.get("ratio"), 3), r.get("reason", "")) for r in rows])

    bench = data.get("scan benchmark") or {}
    lines += ["", "## Scan benchmark (scripts/bench_scan.py)", "",
              f"batch {bench.get('batch', '-')}, {bench.get('dtype', '-')}, K = 4, N = 1; GB/s: bytes the op must "
              "move per forward+backward over its time; x copy: its time over a plain copy of as many bytes.", ""]
    lines += _table(["D", "L", "backend", "fwd ms", "fwd+bwd ms", "GB/s", "x copy", "x mamba_ssm fwd", "x mamba_ssm fwd+bwd"],
                    [(r["D"], r["L"], r["backend"], _fmt(r["fwd_ms"], 3), _fmt(r["fwd_bwd_ms"], 3), _fmt(r["gb_per_s"]),
                      _fmt(r["x_copy"], 2),
                      _fmt(r["mamba_ssm_fwd_ms"] / r["fwd_ms"], 2) if "mamba_ssm_fwd_ms" in r else "-",
                      _fmt(r["mamba_ssm_fwd_bwd_ms"] / r["fwd_bwd_ms"], 2) if "mamba_ssm_fwd_bwd_ms" in r else "-")
                     for r in bench.get("rows", [])])
    targets = scan_targets(bench)
    lines += [""] + ([f"- {b} forward+backward at N = 1, L = 3136: {ratio:.2f}x mamba_ssm (target {t:.1f}x): "
                      f"{'met' if met else 'NOT met'}" for b, ratio, t, met in targets]
                     or ["- mamba_ssm not importable here: no comparison"])

    choice = data.get("auto table") or {}
    lines += ["", "## auto's table (forward+backward ms per shape class)", "",
              f"Written to `{choice.get('table', '-')}` for {choice.get('device', '-')} ({choice.get('capability', '-')})"
              + (f"; not measured (budget): {', '.join(choice['skipped'])}" if choice.get("skipped") else "") + ".", ""]
    backends = choice.get("backends", [])
    lines += _table(["class", *backends, "auto takes"],
                    [(klass, *[_fmt(t.get(b), 3) for b in backends], min(t, key=t.get) if t else "-")
                     for klass, t in choice.get("classes", {}).items()])

    tp = data.get("throughput") or {}
    size = "64 px (Swin-T: 224 px, batch 1)" if tp.get("dry") else f"{tp.get('size', '-')} px"
    lines += ["", f"## Throughput (batch {tp.get('batch', '-')}, {size}, TF32 on)", "",
              "img/s and peak memory (MB); a training step is forward, backward and AdamW.", ""]
    rows = []
    for r in tp.get("rows", []):
        cells = [r["model"], r["precision"], r["mode"]]
        for kind in ("inference", "train"):
            m = r.get(kind, {})
            note = m.get("skipped") or m.get("failed") or r.get("skipped")
            cells += [_fmt(m.get("images_per_s")), _fmt(m.get("peak_memory_mb"), 0)] if "images_per_s" in m else [note or "-", "-"]
        rows.append(cells)
    lines += _table(["model", "precision", "mode", "inference img/s", "peak MB", "train img/s", "peak MB"], rows)
    lines += ["", "VMamba-T against the published 1686 / 571 img/s (A100), scaled to this GPU by Swin-T measured in "
              "the same setting over its published 1244 / 987 img/s (upstream's training figure excludes the "
              "optimizer; ours includes AdamW):", ""]
    lines += [f"- {p} {mode} {kind}: {ours:.0f} img/s, target {target:.0f}: {'met' if met else 'NOT met'}"
              for p, mode, kind, ours, target, met in model_targets(tp)] or ["- not measured"]

    train = steps.get("training", {})
    t = train.get("data") or {}
    lines += ["", "## Training run (vmamba_nano, embedded digits)", ""]
    if t:
        lines += [f"- {t.get('epochs')} epochs in {_fmt(train.get('seconds'), 0)} s on {t.get('device', '-')}: final "
                  f"Acc@1 {_fmt(t.get('final_acc1'), 2)}, best {_fmt(t.get('max_acc1'), 2)}; the CPU run reaches "
                  f"{t.get('cpu_acc1')} (pass at >= {t.get('required_acc1')}): {t.get('verdict')}"]
    lines += [f"- {train.get('status', '-')}{': ' + train['reason'] if train.get('reason') else ''}"]
    return "\n".join(lines) + "\n"

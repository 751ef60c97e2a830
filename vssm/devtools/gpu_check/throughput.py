"""Inference and training images/s with peak memory: the four families' tiny models beside timm's Swin-T and
ConvNeXt-T, batch 128 at 224, TF32 on, fp32 and bf16 AMP, eager and ``torch.compile``d, in one process
(peak memory: CUDA's max allocated, reset for each measurement).

    python -m vssm.devtools.gpu_check.throughput --json throughput.json --seconds 170

Measurements run in order of importance (eager before compiled; VMamba-T and the references first when
compiled) and each one that would not fit in the time left is skipped with that reason. Timing and peak
memory: ``vssm.devtools.benchmark.measure`` (median of synchronised iterations; a training step is forward, backward
and AdamW). With ``--dry``: the families' nano models at 64 x 64 (Swin-T at 224, batch 1), batch 2, one
iteration, and ``torch.compile`` (eager backend) on one model's inference only.
"""
import gc
import sys
import time

import torch

from ...analysis.models import analysis_model
from ..benchmark import measure
from ...models import families as registered_families
from .common import Deadline, step_parser, write_json

REFERENCES = ("swin_tiny_patch4_window7_224", "convnext_tiny")
# rough seconds one measurement takes on an H100 (model build, warm-up, iterations; compiled: compilation)
ESTIMATE = {False: 12.0, True: 75.0}


def plan(dry: bool) -> list:
    """(model, precision, compiled) in order of importance: VMamba-T and Swin-T (the targets' scale) first, then
    ConvNeXt-T and the other families; eager before compiled (dry: the families' nano models)."""
    families = tuple(f.nano if dry else f.tiny for f in registered_families())
    order = [families[0], REFERENCES[0], REFERENCES[1], *families[1:]]
    eager = [(m, p, False) for pair in (order[:2], order[2:3], order[3:]) for p in ("fp32", "bf16") for m in pair]
    compiled = [(m, p, True) for p in ("bf16", "fp32") for m in order]
    return eager + compiled


def measure_one(name, precision, compiled, device, dry: bool, batch: int, size: int, train: bool) -> dict:
    side = (224 if name.startswith("swin") else 64) if dry else size
    model = analysis_model(name)
    kwargs = dict(batch=1 if dry and name.startswith("swin") else batch, size=(side, side), device=device,
                  amp=precision == "bf16", amp_dtype="bfloat16", train=train,
                  warmup=(1 if compiled else 0) if dry else (2 if compiled else 3), iters=1 if dry else 10,
                  compile_backend=("eager" if dry else "inductor") if compiled else None)
    try:
        return measure(model, **kwargs)
    finally:
        del model
        if compiled:
            torch._dynamo.reset()
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = step_parser(__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args(argv)
    deadline, device = Deadline(args.seconds), torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch = 2 if args.dry else args.batch
    rows, todo = [], plan(args.dry)
    print(f"throughput on {device}: batch {batch}, {'64/224 (dry)' if args.dry else args.size} px, TF32 on; "
          f"{len(todo)} (model, precision, mode) x (inference, training)", flush=True)
    for i, (name, precision, compiled) in enumerate(todo):
        row = {"model": name, "precision": precision, "mode": "compiled" if compiled else "eager"}
        rows.append(row)
        if args.dry and compiled and (name, precision) != (registered_families()[0].nano, "bf16"):
            row["skipped"] = "dry run: torch.compile is exercised on one model's inference"
            continue
        # training first: vssm's scan-order caches made under inference_mode cannot serve autograd later
        for kind, train in (("train", True), ("inference", False)):
            if args.dry and compiled and train:
                row[kind] = {"skipped": "dry run: torch.compile is exercised on one model's inference"}
                continue
            need = ESTIMATE[compiled] * (0.1 if args.dry else 1)
            if deadline.left() < need:
                row[kind] = {"skipped": f"over the time budget ({deadline.left():.0f} s left, ~{need:.0f} s needed)"}
                continue
            start = time.perf_counter()
            try:
                r = measure_one(name, precision, compiled, device, args.dry, batch, args.size, train)
                row[kind] = {k: r[k] for k in ("images_per_s", "peak_memory_mb", "first_step_seconds", "batch",
                                               "size")}
                status = f"{r['images_per_s']:.1f} img/s, peak {r['peak_memory_mb']:.0f} MB"
            except Exception as error:  # noqa: BLE001 -- e.g. out of memory or a compile failure: report, go on
                row[kind] = {"failed": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"}
                status = row[kind]["failed"]
            print(f"[{i + 1}/{len(todo)}] {name} {precision} {row['mode']} {kind}: {status} "
                  f"({time.perf_counter() - start:.0f} s, {deadline.left():.0f} s left)", flush=True)
    write_json(args.json, {"device": str(device), "dry": args.dry, "batch": batch, "size": args.size, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Full detection and segmentation runs on the generated shapes for every registered family: metric and time.

    python scripts/bench_shapes.py                            # Mask R-CNN and UperNet, every family, one at a time
    python scripts/bench_shapes.py --families vmamba --tasks seg
    python scripts/bench_shapes.py --jobs 2 --threads 1       # two runs side by side, one thread each

Each run is what the README tells a user to start: ``bash detection/tools/dist_train.sh
configs/detection/<family>/mask_rcnn_<family>_fpn_shapes_nano.py 1`` (and segmentation's
``upernet_<family>_shapes-128x128_nano.py``), one CPU process with ``--threads`` OpenMP threads, training to
the end of the config's schedule and evaluating the held-out images once, in the repository root (the configs
read ``data/shapes_coco`` and ``data/shapes_ade``, made first when missing: ``vssm.data.shapes``). A family
registered without these configs (a plugin) is listed as skipped.

Prints a Markdown table: family, task, the held-out metrics the run printed (bbox / segm mAP, or mIoU and the
per-class IoU), training steps, wall-clock minutes of the whole run (start-up, training, evaluation) and the
median seconds per training step; ``--json`` also writes the rows. Times are those of this machine under
whatever else runs on it: run it on an otherwise idle machine (``--jobs 1``, ``--threads`` = its cores) for the
figures a user would see.
"""
import argparse
import concurrent.futures
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vssm.cli import UsageError, at_least, run_command  # noqa: E402

TASKS = {  # task: (tools folder, config path for a family, metrics read from the run's scalars)
    "det": ("detection", "configs/detection/{0}/mask_rcnn_{0}_fpn_shapes_nano.py",
            ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50")),
    "seg": ("segmentation", "configs/segmentation/{0}/upernet_{0}_shapes-128x128_nano.py", ("mIoU", "aAcc")),
}
STEP_LINE = re.compile(r"Iter\(train\) \[\s*\d+/(\d+)\].*?\stime: ([0-9.]+)")  # iteration-based: [i/N]
EPOCH_LINE = re.compile(r"Epoch\(train\)\s+\[(\d+)\]\[\s*\d+/(\d+)\].*?\stime: ([0-9.]+)")  # [epoch][i/N]
CLASS_ROW = re.compile(r"^\|\s*(\w+)\s*\|\s*([0-9.]+|nan)\s*\|\s*(?:[0-9.]+|nan)\s*\|$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", help="family names (default: every registered family)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--threads", type=at_least(1), default=os.cpu_count(), help="OpenMP threads of each run")
    parser.add_argument("--jobs", type=at_least(1), default=1, help="runs side by side")
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "output", "bench_shapes"))
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--cfg-options", nargs="+", default=[], help="passed to every run (e.g. a shorter schedule)")
    return parser.parse_args(argv)


def plan(args):
    """[(family, task, config or None)] in the registry's order."""
    import vssm.models

    known = {family.name: family for family in vssm.models.families()}
    names = args.families or list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"unknown family {', '.join(unknown)}; registered: {', '.join(known)}")
    runs = []
    for name in names:
        for task in args.tasks:
            config = os.path.join(ROOT, TASKS[task][1].format(name))
            runs.append((name, task, config if os.path.isfile(config) else None))
    return runs


def run_folders(work_dir: str) -> set:
    """The timestamped folders mmengine made for its runs under ``work_dir``."""
    return set(glob.glob(os.path.join(work_dir, "[0-9]*_[0-9]*")))


def read_metrics(folders, keys) -> dict:
    """The last evaluation's metrics from mmengine's ``vis_data/scalars.json`` in these run folders."""
    found = {}
    for path in sorted(os.path.join(folder, "vis_data", "scalars.json") for folder in folders):
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if any(key in record for key in keys):
                    found = {key: record[key] for key in keys if key in record}
    return found


def read_log(log_path: str):
    """(training steps, median seconds a step, per-class IoU {class: IoU}) from a run's console log."""
    steps, times, classes = 0, [], {}
    with open(log_path, errors="replace") as f:
        for line in f:
            match = STEP_LINE.search(line)
            if match:
                steps = int(match.group(1))
                times.append(float(match.group(2)))
            match = EPOCH_LINE.search(line)
            if match:  # steps so far: finished epochs times the steps an epoch
                steps = int(match.group(1)) * int(match.group(2))
                times.append(float(match.group(3)))
            match = CLASS_ROW.match(line.strip())
            if match and match.group(1) != "Class":
                classes[match.group(1)] = float(match.group(2))
    return steps, (statistics.median(times) if times else float("nan")), classes


def run_one(family: str, task: str, config: str, args) -> dict:
    tools, _, keys = TASKS[task]
    work_dir = os.path.join(args.work_dir, f"{task}_{family}")
    os.makedirs(work_dir, exist_ok=True)
    log_path = os.path.join(work_dir, "console.log")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    command = ["bash", os.path.join(ROOT, tools, "tools", "dist_train.sh"), config, "1", "--work-dir", work_dir]
    if args.cfg_options:
        command += ["--cfg-options", *args.cfg_options]
    before = run_folders(work_dir)  # earlier runs' folders: not read
    print(f"[{time.strftime('%H:%M:%S')}] {task} {family}: started, log {log_path}", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    minutes = (time.perf_counter() - start) / 60
    metrics = read_metrics(run_folders(work_dir) - before, keys)
    steps, step_time, classes = read_log(log_path)
    print(f"[{time.strftime('%H:%M:%S')}] {task} {family}: exit {code} after {minutes:.1f} min, {metrics}",
          flush=True)
    return dict(family=family, task=task, exit=code, minutes=round(minutes, 2), steps=steps,
                step_seconds=round(step_time, 4), metrics=metrics, classes=classes, log=log_path)


def format_row(row: dict) -> str:
    m = row["metrics"]
    if row["exit"] != 0:
        result = f"failed (exit {row['exit']}; see {row['log']})"
    elif row["task"] == "det":
        bbox, bbox50, segm, segm50 = (m.get(key, float("nan")) for key in TASKS["det"][2])
        result = f"bbox mAP {bbox:.3f} (AP50 {bbox50:.3f}), segm mAP {segm:.3f} (AP50 {segm50:.3f})"
    else:
        per_class = ", ".join(f"{name} {iou:.1f}" for name, iou in row["classes"].items())
        result = f"mIoU {m.get('mIoU', float('nan')):.1f} ({per_class})"
    return (f"| {row['family']} | {row['task']} | {result} | {row['steps']} | {row['minutes']:.1f} | "
            f"{row['step_seconds']:.3f} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = plan(args)
    from vssm.data.shapes import make_ade, make_coco

    if any(task == "det" for _, task, _ in runs):
        make_coco(os.path.join(ROOT, "data", "shapes_coco"), log=print)
    if any(task == "seg" for _, task, _ in runs):
        make_ade(os.path.join(ROOT, "data", "shapes_ade"), log=print)
    skipped = [(family, task) for family, task, config in runs if config is None]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, family, task, config, args) for family, task, config in runs if config]
        rows = [future.result() for future in futures]
    print(f"\n{args.jobs} run(s) at a time, {args.threads} thread(s) each, on {os.cpu_count()} cores\n")
    print("| family | task | held-out metric | steps | minutes (whole run) | s / step (median) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(format_row(row))
    for family, task in skipped:
        print(f"| {family} | {task} | skipped: no shapes config for this family | | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(row["exit"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(run_command(main))

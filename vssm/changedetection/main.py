"""Train and evaluate ChangeMamba-style binary change detectors on any vssm backbone.

    python changedetection/main.py --cfg configs/changedetection/vmamba/vmamba_nano.yaml   # embedded pairs, CPU
    torchrun --nproc_per_node=4 changedetection/main.py \\
        --cfg configs/changedetection/fractalmamba/fractalmamba_tiny.yaml --data-path /data/LEVIR-CD+ \\
        --pretrained fractalmamba_tiny.pth --batch-size 4       # 4 GPUs x 4 pairs: ChangeMamba's batch 16
    python changedetection/main.py --cfg CONFIG --data-path DATA --eval --resume best.pth --save-maps maps/

DDP over NCCL on GPUs and gloo on CPUs. A run writes to OUTPUT/changedetection/MODEL.BACKBONE/TAG: a
checkpoint per epoch (atomic, the newest TRAIN.KEEP_CHECKPOINTS kept), best.pth (highest F1), log_rank*.txt,
log.jsonl (one JSON line per epoch) and TensorBoard scalars under tensorboard/. Started again with the same
command, it resumes from the newest checkpoint and ends with the same weights as an uninterrupted run.
Evaluation prints Precision, Recall, F1, IoU, OA and Kappa (percent, class 1 = change) over whole images.
"""
from ..engine.command import flag_overrides, run_trainer, trainer_parser
from .config import get_config
from .task import ChangeDetectionTask


def parse_args(argv=None):
    p = trainer_parser("vssm change-detection trainer", __doc__,
                       "YAML config (configs/changedetection/<family>/<model>.yaml)")
    p.add_argument("--save-maps", metavar="DIR", help="write pre | post | ground truth | prediction PNGs of the "
                                                      "evaluated pairs to DIR (the final evaluation when training)")
    return p.parse_args(argv)


def make_task(args) -> ChangeDetectionTask:
    return ChangeDetectionTask(get_config(args.cfg, args.opts, flag_overrides(args, {"SAVE_MAPS": args.save_maps})))


def cli(argv=None) -> int:
    return run_trainer(make_task, parse_args, argv)

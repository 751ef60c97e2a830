"""Train and evaluate vssm classifiers (Swin-style trainer).

    torchrun --nproc_per_node=N classification/main.py --cfg CONFIG --batch-size 128 --data-path DATA --output OUT
    python -m torch.distributed.launch --nproc_per_node=N classification/main.py --cfg CONFIG ...
    python classification/main.py --cfg configs/classification/vmamba/vmamba_nano.yaml   # embedded digits, CPU

DDP over NCCL on GPUs and gloo on CPUs. A run writes to OUTPUT/MODEL.NAME/TAG: a checkpoint per epoch
(atomic, the newest TRAIN.KEEP_CHECKPOINTS kept), best.pth, log_rank*.txt, log.jsonl (one JSON line per
epoch) and TensorBoard scalars under tensorboard/. Started again with the same command, it resumes from
the newest checkpoint and ends with the same weights as an uninterrupted run (same seed, CPU).
"""
from ..engine.command import flag_overrides, run_trainer, trainer_parser
from .config import get_config
from .task import ClassificationTask


def parse_args(argv=None):
    p = trainer_parser("vssm classification trainer", __doc__,
                       "YAML config (configs/classification/<family>/<model>.yaml)")
    p.add_argument("--throughput", action="store_true", help="only measure inference throughput")
    return p.parse_args(argv)


def make_task(args) -> ClassificationTask:
    extra = {"THROUGHPUT_MODE": True if args.throughput else None}
    return ClassificationTask(get_config(args.cfg, args.opts, flag_overrides(args, extra)))


def cli(argv=None) -> int:
    return run_trainer(make_task, parse_args, argv)

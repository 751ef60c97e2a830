"""The command line every trainer shares: its flags, how they override the config, and how a run is started."""
import argparse

from ..cli import run_command
from .trainer import Trainer


def trainer_parser(prog: str, description: str, cfg_help: str) -> argparse.ArgumentParser:
    """The flags of every trainer; a task adds its own (``--throughput``, ``--save-maps``, ...)."""
    p = argparse.ArgumentParser(prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help=cfg_help)
    p.add_argument("--opts", nargs="+", default=[], help="config overrides: KEY VALUE [KEY VALUE ...]")
    p.add_argument("--batch-size", type=int, help="samples per process and step (DATA.BATCH_SIZE)")
    p.add_argument("--data-path", help="dataset folder (DATA.DATA_PATH; default: the task's embedded data)")
    p.add_argument("--output", help="root of the output folders (OUTPUT)")
    p.add_argument("--tag", help="run name (TAG)")
    p.add_argument("--pretrained", help="weights to start from: ours or the authors' release (MODEL.PRETRAINED)")
    p.add_argument("--resume", help="checkpoint of this trainer to resume from or, with --eval, to evaluate "
                                    "(MODEL.RESUME)")
    p.add_argument("--eval", action="store_true", help="only evaluate")
    p.add_argument("--accumulation-steps", type=int, help="gradient accumulation steps")
    p.add_argument("--use-checkpoint", action="store_true", help="activation checkpointing to save memory")
    p.add_argument("--disable-amp", action="store_true", help="train and evaluate in fp32")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="DANGEROUS: read --pretrained/--resume files with plain pickle, which runs any code the file "
                        "holds; only for files you made or fully trust (by default only weights, numbers and "
                        "configs are read)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # launch
    return p


def flag_overrides(args, extra: dict = None) -> dict:
    """The config keys the shared flags (and a task's ``extra`` {key: value or None}) set."""
    values = {"DATA.BATCH_SIZE": args.batch_size, "DATA.DATA_PATH": args.data_path, "OUTPUT": args.output,
              "TAG": args.tag, "MODEL.PRETRAINED": args.pretrained, "MODEL.RESUME": args.resume,
              "TRAIN.ACCUMULATION_STEPS": args.accumulation_steps, **(extra or {})}
    overrides = {k: v for k, v in values.items() if v is not None}
    for flag, key, value in ((args.eval, "EVAL_MODE", True), (args.use_checkpoint, "TRAIN.USE_CHECKPOINT", True),
                             (args.disable_amp, "AMP_ENABLE", False)):
        if flag:
            overrides[key] = value
    return overrides


def run_trainer(make_task, parse_args, argv=None) -> int:
    """Parse ``argv``, build the task (``make_task(args)``: its config read and validated) and run it; the exit
    status of :func:`vssm.cli.run_command` (one ``error:`` line and 2 for unusable input)."""
    def main(argv):
        args = parse_args(argv)
        Trainer(make_task(args), local_rank=args.local_rank, trust_checkpoint=args.trust_checkpoint).run()
    return run_command(main, argv)

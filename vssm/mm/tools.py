"""Train and test entry points shared by detection/tools and segmentation/tools (mmengine's Runner).

One process (``--launcher none``) runs on a CPU or one GPU; ``--launcher pytorch`` under torchrun runs
N GPUs with NCCL. Configs pick their library through ``default_scope`` and ``custom_imports``.
"""
import argparse
import itertools
import logging
import os
import sys
import time

import torch

from ..checkpoint import read_checkpoint


def _use_safe_checkpoint_loading(trust_checkpoint=False):
    """mmengine 0.10 calls torch.load(path) and torch >= 2.6 defaults to weights_only=True, which refuses
    mmengine's own checkpoints (their log history); read local files through vssm.checkpoint.read_checkpoint
    instead (weights, numbers, configs and mmengine's log records only, unless ``trust_checkpoint``)."""
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_local(filename, map_location=None):
        return read_checkpoint(filename, trust_checkpoint=trust_checkpoint)
    CheckpointLoader.register_scheme(prefixes="", loader=load_local, force=True)


def _parser(description, test):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("config", help="config file")
    if test:
        p.add_argument("checkpoint", help="checkpoint file")
        p.add_argument("--tta", action="store_true", help="test-time augmentation (the config's tta_pipeline)")
        p.add_argument("--show-dir", help="write visualised predictions here")
    else:
        p.add_argument("--resume", nargs="?", const="auto", help="resume from a checkpoint (default: the latest)")
        p.add_argument("--amp", action="store_true", help="automatic mixed precision")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)")
    p.add_argument("--cfg-options", nargs="+", action=_DictAction, default={},
                   help="override config entries: key=value (e.g. train_dataloader.batch_size=4)")
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="DANGEROUS: read checkpoints with plain pickle, which runs any code the file holds; only for "
                        "files you made or fully trust")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


class _DictAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from mmengine.config import DictAction
        DictAction(self.option_strings, self.dest)(parser, namespace, values, option_string)


_RUNS = itertools.count()


def _load_config(args):
    from mmengine.config import Config
    _use_safe_checkpoint_loading(args.trust_checkpoint)
    if not os.path.isfile(args.config):
        raise SystemExit(f"error: config file not found: {args.config}")
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or os.path.join(
        "work_dirs", os.path.splitext(os.path.basename(args.config))[0])
    # mmengine keys its logger and visualizer singletons by this name: unique, so that several runs in one
    # process never write into each other's folders
    cfg.experiment_name = (f"{os.path.splitext(os.path.basename(args.config))[0]}_{time.strftime('%Y%m%d_%H%M%S')}"
                           f"_{os.getpid()}_{next(_RUNS)}")
    if cfg.get("visualizer") is not None:  # the libraries' runtime configs give it a fixed name
        cfg.visualizer.name = cfg.experiment_name
    if not torch.cuda.is_available():
        cfg.setdefault("env_cfg", {})
        cfg.env_cfg.setdefault("dist_cfg", {})
        cfg.env_cfg.dist_cfg["backend"] = "gloo"
        if args.launcher != "none":
            raise SystemExit("error: distributed runs need GPUs; on a CPU run one process (launcher none, GPUS=1)")
    return cfg


def train_main(argv=None, description="train a detector or segmentor"):
    args = _parser(description, test=False).parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = _load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    runner.train()
    return 0


def test_main(argv=None, description="test a detector or segmentor"):
    args = _parser(description, test=True).parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"error: checkpoint not found: {args.checkpoint}")
    cfg = _load_config(args)
    cfg.load_from = args.checkpoint
    if args.tta:
        if "tta_pipeline" not in cfg or "tta_model" not in cfg:
            raise SystemExit("error: --tta needs tta_pipeline and tta_model in the config")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.show_dir:
        cfg.default_hooks.setdefault("visualization", {})
        cfg.default_hooks.visualization.update(draw=True, show=False, test_out_dir=args.show_dir)
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    logging.getLogger(__name__).info("metrics: %s", metrics)
    return 0


if __name__ == "__main__":
    sys.exit(train_main())

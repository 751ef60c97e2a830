"""Train and test entry points shared by detection/tools and segmentation/tools (mmengine's Runner).

One process (``--launcher none``) runs on a CPU or one GPU; ``--launcher pytorch`` under torchrun runs
N GPUs with NCCL. Configs pick their library through ``default_scope`` and ``custom_imports``.

Every checkpoint the runner loads (the tested one, ``--resume``, a config's ``load_from``) must match the
model: otherwise the run stops with the load report (missing, unexpected and mis-shaped keys) instead
of evaluating or training from partly random weights. ``--allow-mismatch`` loads what matches and
reports the rest. ``cli`` turns unreadable or mismatched checkpoints into one ``error:`` line and exit 2.
"""
import argparse
import itertools
import logging
import os
import re
import sys
import time

import torch

from ..checkpoint import CheckpointError, CheckpointMismatchError, compare_state_dict, read_checkpoint
from ..cli import UsageError, run_command


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
        p.add_argument("--show-dir", help="write a PNG of each image's predictions (beside its ground truth) here")
    else:
        p.add_argument("--resume", nargs="?", const="auto", help="resume from a checkpoint (default: the latest)")
        p.add_argument("--amp", action="store_true", help="automatic mixed precision")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)")
    p.add_argument("--cfg-options", nargs="+", action=_DictAction, default={},
                   help="override config entries: key=value (e.g. train_dataloader.batch_size=4)")
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="load a checkpoint whose keys or shapes do not all match the model: the matching tensors are "
                        "loaded, the rest is reported and left as initialised (default: stop with the report)")
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


def _inner_model(model):
    """The model inside mmengine's wrappers (DDP) and test-time-augmentation model, as mmengine loads it."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def checkpoint_report(model, checkpoint, source: str = "", revise_keys=((r"^module\.", ""),)):
    """Load report (vssm.checkpoint.LoadReport) of an mmengine checkpoint against a (wrapped) model."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else {}
    for pattern, replacement in revise_keys:
        state = {re.sub(pattern, replacement, str(k)): v for k, v in state.items()}
    report = compare_state_dict(_inner_model(model).state_dict(), state, source)
    report.missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]  # as mmengine
    return report


def check_checkpoint(model, checkpoint, source: str, allow_mismatch: bool = False, resuming: bool = False):
    """Raise CheckpointMismatchError (or, with ``allow_mismatch``, log a warning) when ``checkpoint`` does not
    fit ``model``; CheckpointError when a checkpoint to resume from holds no training state."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source} is not an mmengine checkpoint: it holds a {type(checkpoint).__name__}")
    report = checkpoint_report(model, checkpoint, source)
    if not report.ok:
        hint = ""
        if "state_dict" not in checkpoint and "model" in checkpoint:
            hint = ("\nit looks like a classification checkpoint: to start from its weights, give it to the "
                    "backbone (init_cfg=dict(type='Pretrained', checkpoint=...) in the config)")
        message = (f"{source} does not fit the {type(_inner_model(model)).__name__} of this config:\n"
                   f"{report.describe()}{hint}")
        if not allow_mismatch:
            raise CheckpointMismatchError(f"{message}\n(--allow-mismatch loads the matching tensors and leaves "
                                          f"the rest initialised)")
        logging.getLogger(__name__).warning("--allow-mismatch: %s", message)
    meta = checkpoint.get("meta")
    if resuming and not (isinstance(meta, dict) and {"epoch", "iter"} <= set(meta) and "message_hub" in checkpoint):
        raise CheckpointError(f"cannot resume from {source}: it holds no training state (meta epoch/iter and "
                              f"message_hub); to start from its weights, use --cfg-options load_from={source} "
                              f"without --resume")


def _runner_class(allow_mismatch: bool):
    """mmengine's Runner, loading every checkpoint through :func:`check_checkpoint`."""
    from mmengine.model import is_model_wrapper
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

    class CheckedRunner(Runner):
        _resuming = False

        def resume(self, filename, *args, **kwargs):
            self._resuming = True
            try:
                return super().resume(filename, *args, **kwargs)
            finally:
                self._resuming = False

        def load_checkpoint(self, filename, map_location="cpu", strict=False, revise_keys=[(r"^module\.", "")]):
            checkpoint = _load_checkpoint(filename, map_location=map_location)
            self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
            check_checkpoint(self.model, checkpoint, filename, allow_mismatch, self._resuming)
            model = self.model.module if is_model_wrapper(self.model) else self.model
            checkpoint = _load_checkpoint_to_model(model, checkpoint, strict=not allow_mismatch,
                                                   revise_keys=revise_keys)
            self._has_loaded = True
            self.logger.info(f"Load checkpoint from {filename}")
            return checkpoint

    return CheckedRunner


def _check_data(cfg):
    """A UsageError naming a dataloader's missing data folder or annotation file (and, for the generated shapes,
    the command that makes them), instead of the dataset's traceback."""
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset = (cfg.get(loader) or {}).get("dataset") or {}
        root = dataset.get("data_root")
        if not isinstance(root, str) or "://" in root:
            continue
        missing = root if not os.path.isdir(root) else None
        ann_file = dataset.get("ann_file")
        if missing is None and isinstance(ann_file, str) and ann_file:
            path = ann_file if os.path.isabs(ann_file) else os.path.join(root, ann_file)
            missing = None if os.path.isfile(path) else path
        if missing is not None:
            hint = ("; make the generated shapes with: python scripts/make_shapes_data.py"
                    if "shapes_" in os.path.basename(os.path.normpath(root)) else "")
            raise UsageError(f"{loader}: {missing} does not exist (run from the folder the config's data_root "
                            f"is relative to, or set it with --cfg-options){hint}")


def _load_config(args):
    from mmengine.config import Config
    _use_safe_checkpoint_loading(args.trust_checkpoint)
    if not os.path.isfile(args.config):
        raise UsageError(f"config file not found: {args.config}")
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
    _check_data(cfg)
    if not torch.cuda.is_available():
        cfg.setdefault("env_cfg", {})
        cfg.env_cfg.setdefault("dist_cfg", {})
        cfg.env_cfg.dist_cfg["backend"] = "gloo"
        if args.launcher != "none":
            raise UsageError("distributed runs need GPUs; on a CPU run one process (launcher none, GPUS=1)")
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
    runner = _runner_class(args.allow_mismatch).from_cfg(cfg)
    runner.train()
    return 0


def test_main(argv=None, description="test a detector or segmentor"):
    args = _parser(description, test=True).parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if os.path.isdir(args.checkpoint):
        raise SystemExit(f"error: the checkpoint {args.checkpoint} is a folder; give the checkpoint file "
                         f"(e.g. {os.path.join(args.checkpoint, 'iter_1000.pth')})")
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    cfg = _load_config(args)
    cfg.load_from = args.checkpoint
    if args.tta:
        if "tta_pipeline" not in cfg or "tta_model" not in cfg:
            raise UsageError("--tta needs tta_pipeline and tta_model in the config")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.show_dir:
        base = {"mmdet": "DetVisualizationHook", "mmseg": "SegVisualizationHook"}.get(cfg.get("default_scope"))
        if base is None:
            raise UsageError(f"--show-dir draws mmdet and mmseg predictions; this config's default_scope is "
                             f"{cfg.get('default_scope')!r}")
        cfg.default_hooks = cfg.get("default_hooks") or {}
        cfg.default_hooks["visualization"] = dict(type=f"{base}ToPNG", out_dir=os.path.abspath(args.show_dir))
    runner = _runner_class(args.allow_mismatch).from_cfg(cfg)
    metrics = runner.test()
    logging.getLogger(__name__).info("metrics: %s", metrics)
    return 0


def cli(main, argv=None, **kwargs) -> int:
    """Run ``train_main`` or ``test_main`` through vssm's one CLI error path (:func:`vssm.cli.run_command`): bad
    input and a checkpoint that cannot be read or does not fit end in one ``error:`` line and exit status 2 (a
    load report follows it), not a traceback. glibc keeps freed memory (vssm.runtime)."""
    from ..runtime import retain_freed_memory
    retain_freed_memory()
    # oneDNN caches a convolution primitive per input shape (1024 by default) and a detector's mask head sees a
    # new number of RoIs each step: on a CPU the cache grew a Mask R-CNN run by ~8 MB a step (to 3 GB in 800
    # steps). 256 entries hold every fixed-shape primitive of these models (forward, backward-data and
    # backward-weights of each convolution; 64 did not: the shapes UperNet stepped 1.35x slower, Mask R-CNN
    # 1.2x, rebuilding them) and bound the rest. Read when the first primitive is made: set before any runs.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
    return run_command(lambda args: main(args, **kwargs), argv)


if __name__ == "__main__":
    sys.exit(cli(train_main))

"""Write timm's hub folder for any checkpoint vssm reads: config.json (the full pretrained config), model.safetensors.

    python -m vssm.hub --checkpoint output/vmamba_nano/default/best.pth --out hub/vmamba_nano_digits
    python -m vssm.hub --model vmamba_tiny_s1l8 --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth --out hub/vmamba_tiny

The checkpoint may be our trainer's (its classes, data config and model options are kept), the authors' release
(converted to vssm's layout; ImageNet-1k's class names for a 1000-class head), a state dict, a .safetensors file
or another hub folder. The model is built for the weights and loaded strictly: a checkpoint that does not fit
``--model`` stops with the load report and writes nothing. The folder loads back with
``timm.create_model("local-dir:FOLDER", pretrained=True)`` (vssm imported), ``vssm.load_checkpoint``,
``python -m vssm.predict --checkpoint FOLDER`` and ``python -m vssm.export --checkpoint FOLDER``; publish it with
``hf upload ORG/NAME FOLDER`` (huggingface_hub's client) and load it anywhere with
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` once the files are in the Hugging Face cache.
"""
import argparse
import os
import sys

from .checkpoint import CheckpointError, export_hub_folder


def parse_args(argv=None):
    p = argparse.ArgumentParser("python -m vssm.hub", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the weights: a .pth or .safetensors file, or a hub folder")
    p.add_argument("--out", required=True, help="the hub folder to write")
    p.add_argument("--model", help="the registered model (vssm.list_models()); default: the one the checkpoint names")
    p.add_argument("--force", action="store_true", help="replace --out when it exists and is not empty")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="DANGEROUS: read --checkpoint with plain pickle, which runs any code the file holds")
    return p.parse_args(argv)


def run(args) -> int:
    """Write the hub folder of parsed arguments."""
    out = os.path.abspath(args.out)
    source, target = os.path.realpath(args.checkpoint), os.path.realpath(out)
    if source == target or source.startswith(target.rstrip(os.sep) + os.sep):
        raise CheckpointError(f"--out {args.out} is or holds the checkpoint {args.checkpoint}: writing the hub folder "
                              f"replaces --out and would delete the weights it reads; choose another --out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointError(f"--out {args.out} is a file; name a folder to write")
    if os.path.isdir(out) and os.listdir(out) and not args.force:
        raise CheckpointError(f"--out {args.out} exists and is not empty (--force replaces it)")
    folder, report = export_hub_folder(args.checkpoint, out, args.model, args.trust_checkpoint, overwrite=True)
    print(f"loaded {report.describe()}", file=sys.stderr, flush=True)
    print(f"wrote {args.out}: {', '.join(sorted(os.listdir(folder)))}\n"
          f"  load it: timm.create_model('local-dir:{args.out}', pretrained=True) (after import vssm)\n"
          f"  publish it: hf upload ORG/NAME {args.out}")
    return 0


def main(argv=None) -> int:
    """Run the command line: 0 when the folder is written, 2 on unusable arguments (one ``error:`` line, with the
    load report for a checkpoint that does not fit; :func:`vssm.cli.run_command`)."""
    from .cli import run_command
    return run_command(lambda argv: run(parse_args(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())

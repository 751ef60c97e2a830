"""Top-1 agreement of an int8 file with its fp32 file, and both accuracies, on held-out images in class folders.

    python -m vssm.export --model vmamba_nano --checkpoint output/vmamba_nano/default/best.pth --static \
        --int8 --calibration ~/.cache/vssm/data/digits/train --out digits_int8.onnx      # writes digits_int8.fp32.onnx too
    python scripts/int8_agreement.py digits_int8.onnx ~/.cache/vssm/data/digits/val      # the 360 held-out digits

Images are read as the trainer reads them (``vssm.data.images.read_image`` and the evaluation transform of the
preprocessing stored in the file); labels are the class folders, in the order of the file's class names.
The fp32 file is ``INT8.fp32.onnx`` unless ``--fp32`` names it. Exit status 1 when the agreement is below
``--min-agreement`` (0.99).
"""
import argparse
import os
import sys


from vssm import export
from vssm.deploy import quantize
from vssm.deploy.runtimes import open_session


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("int8", help="the int8 ONNX file (python -m vssm.export --int8)")
    p.add_argument("images", help="held-out images, one folder per class")
    p.add_argument("--fp32", help="the fp32 file (default: INT8.fp32.onnx beside it)")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime")
    p.add_argument("--min-agreement", type=float, default=0.99)
    args = p.parse_args(argv)
    fp32 = args.fp32 or export.fp32_path(args.int8)
    for path in (args.int8, fp32):
        if not os.path.isfile(path):
            p.error(f"{path}: no such file")
    try:
        config = quantize.file_data_config(fp32)
        batches, labels = quantize.labelled_batches(args.images, config)
    except quantize.QuantizationError as e:
        p.error(str(e))
    logits = {name: quantize.predictions(open_session(path, args.runtime), batches)
              for name, path in (("fp32", fp32), ("int8", args.int8))}
    top1 = {name: value.argmax(-1) for name, value in logits.items()}
    agreement = float((top1["fp32"] == top1["int8"]).mean())
    print(f"{len(labels)} images ({args.runtime}): top-1 agreement int8 / fp32 {agreement:.2%}; accuracy fp32 "
          f"{(top1['fp32'] == labels).mean():.2%}, int8 {(top1['int8'] == labels).mean():.2%}")
    int8_ops, float_ops = quantize.float_and_int8_ops(args.int8)
    print(f"int8 operators: {int8_ops}; float operators: {dict(sorted(float_ops.items(), key=lambda kv: -kv[1]))}")
    return 0 if agreement >= args.min_agreement else 1


if __name__ == "__main__":
    sys.exit(main())

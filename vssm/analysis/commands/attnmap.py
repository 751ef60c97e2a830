"""Implicit attention of the selective scans: which tokens a block's scans read for a chosen position.

    python analyze/attnmap.py --model vmamba_tiny_s1l8 --out output/attn.png          # first block of each stage
    python analyze/attnmap.py --model spatialmamba_tiny --blocks 2.3 --position 0.25 0.75 --matrix --out output/attn.png

For block "stage.block", its token mixer maps the (h, w, D) map x to y through scans whose step sizes,
B and C depend on the image; with those fixed and the D skip left out, y[p, d] = sum_q alpha_d[p, q] x[q, d].
The figure shows, for the query p at --position (fractions of height and width), the mean over channels
of |alpha_d[p, q]| for every token q (see vssm.analysis.attention). --matrix also writes the whole
(h*w, h*w) matrix of the blocks with at most --max-tokens tokens to <out>_matrix.png (one backward pass per
row); the blocks with more (the first stage's, at 224 x 224: 56 x 56 = 3136 tokens) are named under the
figure and in the printout. Without --checkpoint the figures say the weights are random.
"""
import argparse
import os
import sys
import time

import torch

from vssm.analysis import (analysis_model, attention_matrix, attention_rows, denormalise, grid_position, load_images,
                           mixer_map, token_mixers)
from vssm.analysis.cli import InputError, check_models, command, output_file, positive


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a vssm model name")
    p.add_argument("--checkpoint", help="weights to load (default: random initial weights, said in the figures)")
    p.add_argument("--blocks", nargs="+", help="blocks as stage.block (default: the first block of each stage)")
    p.add_argument("--position", type=float, nargs=2, default=[0.5, 0.5], metavar=("ROW", "COL"),
                   help="query position as fractions of height and width (default: the centre)")
    p.add_argument("--size", type=positive, nargs="+", default=[224], help="input size S or H W")
    p.add_argument("--images", type=positive, default=1, help="images to average over")
    p.add_argument("--data-path", help="folder of images; default: embedded digits")
    p.add_argument("--random", action="store_true", help="a noise image instead of the digits")
    p.add_argument("--matrix", action="store_true", help="also draw the full matrices (one backward pass per row)")
    p.add_argument("--max-tokens", type=positive, default=1024, help="largest block drawn as a full matrix")
    p.add_argument("--linear", action="store_true", help="linear colour scale (default: log10 relative to the peak)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=output_file(".png"), default=os.path.join("output", "attention.png"),
                   help="PNG to write (default: output/attention.png; the matrices go to <out>_matrix.png)")
    args = p.parse_args(argv)
    if len(args.size) not in (1, 2):
        p.error("--size takes S or H W")
    if not all(0 <= f <= 1 for f in args.position):
        p.error("--position takes fractions in [0, 1]")
    check_models(p, [args.model])
    return args


def parse_block(text: str):
    try:
        stage, block = (int(v) for v in text.split("."))
    except ValueError:
        raise InputError(f"block {text!r} is not stage.block (e.g. 2.3)")
    return stage, block


@command
def main(argv=None):
    args = parse_args(argv)
    from vssm.analysis.plots import attention_figure, matrix_figure, weights_label

    size = args.size * 2 if len(args.size) == 1 else args.size
    torch.manual_seed(args.seed)
    model = analysis_model(args.model, args.checkpoint, args.device)
    mixers = token_mixers(model)
    if not mixers:
        raise InputError(f"{args.model} has no selective-scan blocks to analyse")
    if args.blocks:
        blocks = [parse_block(b) for b in args.blocks]
    else:
        blocks = [min(k for k in mixers if k[0] == stage) for stage in sorted({s for s, _ in mixers})]
    unknown = [f"{s}.{b}" for s, b in blocks if (s, b) not in mixers]
    if unknown:
        raise InputError(f"{args.model} has no block {', '.join(unknown)}; "
                         f"blocks: {', '.join(f'{s}.{b}' for s, b in sorted(mixers))}")
    images, _ = load_images(args.data_path, args.images, size, args.seed, "random" if args.random else "digits")
    rows, matrices, left_out = {}, {}, []
    for stage, block in blocks:
        start = time.perf_counter()
        x, y = mixer_map(model, images, stage, block)
        h, w = y.shape[1:3]
        query = grid_position(args.position, (h, w))
        row = attention_rows(x, y, [query])[0]
        title = f"block {stage}.{block}"
        rows[title] = row
        share = float(row[max(query[0] - 1, 0):query[0] + 2, max(query[1] - 1, 0):query[1] + 2].sum() / row.sum())
        print(f"{title}: {h}x{w} tokens, query {query}, {share:.1%} of |alpha| within the 3x3 neighbourhood "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
        if args.matrix and h * w <= args.max_tokens:
            matrices[title] = attention_matrix(x, y, args.max_tokens)
        elif args.matrix:
            left_out.append(f"{title}: {h}x{w} = {h * w} tokens > --max-tokens {args.max_tokens}")
    weights = weights_label(args.checkpoint)
    where = f"query at ({args.position[0]:g}, {args.position[1]:g}) of the image"
    image = denormalise(images[0])
    path = attention_figure(image, args.position, rows, args.out, log_scale=not args.linear,
                            title=f"Implicit attention of the scans of {args.model}, {where}: {weights}")
    print(f"wrote {path}")
    if args.matrix:
        if left_out:
            print(f"no matrix drawn for {'; '.join(left_out)} (one backward pass per token: raise --max-tokens or "
                  f"give a smaller --size)", flush=True)
        if matrices:
            stem, ext = os.path.splitext(args.out)
            skipped = [f"Not drawn (more tokens than --max-tokens {args.max_tokens}): "
                       + ", ".join(line.split(" > ")[0] for line in left_out) + "."] if left_out else []
            path = matrix_figure(matrices, stem + "_matrix" + (ext or ".png"), left_out=skipped,
                                 title=f"Implicit attention matrices of {args.model}: {weights}")
            print(f"wrote {path}")
        else:
            print(f"no block has at most {args.max_tokens} tokens; no matrix drawn (raise --max-tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

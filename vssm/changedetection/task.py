"""Binary change detection over the training engine: the detector on a registered backbone, its loss, the six
change metrics over whole images, and side-by-side result pictures."""
import logging
import os
import time
from collections import Counter

import numpy as np
import torch
from PIL import Image

from .. import load_checkpoint
from ..checkpoint import CheckpointError, CheckpointMismatchError, read_checkpoint
from ..checkpoint.loading import extract_state_dict, strip_prefix
from ..engine.process import format_eta
from ..engine.trainer import Step, Task
from .config import ConfigError, run_dir
from .data import build_datasets, build_loaders
from .detector import build_change_detector
from .losses import ChangeLoss
from .metrics import METRIC_NAMES, ChangeMetrics, metrics_from_confusion

log = logging.getLogger("train")


def build_model(config):
    """The ChangeDetector of a config (encoder MODEL.BACKBONE, decoder MODEL.DECODER)."""
    c, d = config, config.MODEL.DECODER
    try:
        return build_change_detector(c.MODEL.BACKBONE, width=d.WIDTH, mixer=d.MIXER, ssm_ratio=d.SSM_RATIO,
                                     d_state=d.D_STATE, mlp_ratio=d.MLP_RATIO, decoder_drop_path=d.DROP_PATH,
                                     scan_backend=c.MODEL.SCAN_BACKEND, drop_path_rate=c.MODEL.DROP_PATH_RATE,
                                     **dict(c.MODEL.OPTIONS))
    except TypeError as e:
        raise ConfigError(f"MODEL.OPTIONS {dict(c.MODEL.OPTIONS)} do not fit {c.MODEL.BACKBONE}: {e}") from None


class ChangeDetectionTask(Task):
    """Change detection of image pairs (LEVIR-CD+ layouts, or the embedded generated pairs)."""

    unit, unit_short = "pairs", "pairs"
    metric_prefix, metric_names = "test", tuple(k.lower() for k in METRIC_NAMES)
    score, score_label = "f1", "F1"

    def __init__(self, config):
        self.config = config

    def run_dir(self) -> str:
        return run_dir(self.config)

    def describe_model(self) -> str:
        return f"{self.config.MODEL.BACKBONE} encoder + change decoder"

    def build_data(self, train: bool):
        c = self.config
        train_set, test_set, root = build_datasets(c, train=train)
        self.train_names = train_set.names if train_set is not None else []
        log.info(f"data {root} ({test_set.layout} layout): "
                 + (f"{len(train_set)} {c.DATA.TRAIN_SPLIT} / " if train_set is not None else "")
                 + f"{len(test_set)} {c.DATA.TEST_SPLIT} pairs")
        return build_loaders(c, train_set, test_set, c.SEED)

    def build_model(self):
        return build_model(self.config)

    def load_pretrained(self, model, trust_checkpoint: bool):
        """Classification weights into the encoder, strictly (its new output norms are reported). A whole
        change-detection model's checkpoint is loaded whole, strictly, for an evaluation (its decoder is what is
        evaluated); to train from one, only its encoder is taken, and the log says so."""
        c = self.config
        saved = read_checkpoint(c.MODEL.PRETRAINED, trust_checkpoint=trust_checkpoint)
        try:
            if c.EVAL_MODE and _holds_a_decoder(saved):  # as --resume loads it: the whole model, strictly
                try:
                    model.load_state_dict(strip_prefix(extract_state_dict(saved), "module."))
                except RuntimeError as e:
                    raise CheckpointMismatchError(f"{c.MODEL.PRETRAINED} holds another change-detection model "
                                                  f"than this config's: {e}") from None
                log.info(f"loaded the change-detection model {c.MODEL.PRETRAINED} (encoder and decoder)")
                return
            report = load_checkpoint(model.backbone, saved, source=c.MODEL.PRETRAINED)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"--pretrained {c.MODEL.PRETRAINED} does not fit the encoder "
                                          f"{c.MODEL.BACKBONE}:\n{e}") from None
        log.info(f"loaded pretrained encoder weights {c.MODEL.PRETRAINED}"
                 + (f" ({len(report.initialized)} new output-norm tensors initialised)" if report.initialized else ""))
        if report.skipped:
            log.warning(f"{c.MODEL.PRETRAINED} also holds {len(report.skipped)} tensors outside the encoder (a whole "
                        f"change-detection model's decoder): not loaded, the decoder starts from its initialisation "
                        f"(--resume continues that model's training, --eval --pretrained evaluates it whole)")

    def build_criterion(self):
        return ChangeLoss(self.config.LOSS.LOVASZ_WEIGHT)

    def training_loss(self, model, batch, criterion, epoch, autocast, ema):
        pre, post, labels, _ = batch
        device = next(model.parameters()).device
        pre, post = pre.to(device, non_blocking=True), post.to(device, non_blocking=True)
        with autocast():
            logits = model(pre, post)
        return Step(criterion(logits, labels.to(device, non_blocking=True)), pre.shape[0])

    def batch_samples(self, batch) -> list:
        return [self.train_names[i] for i in batch[3].tolist()]

    @torch.no_grad()
    def evaluate(self, model, loader, device, autocast, label="test", save_outputs=False) -> dict:
        """The six metrics (percent) over the whole evaluation split (all processes); with SAVE_MAPS (the final
        evaluation or --eval) a PNG per pair in that folder: pre | post | ground truth | prediction."""
        c = self.config
        save_maps = c.SAVE_MAPS if save_outputs else ""
        model.eval()
        metrics = ChangeMetrics(device)
        steps, start = len(loader), time.time()
        if save_maps:
            os.makedirs(save_maps, exist_ok=True)
        picture_names = map_file_names(loader.dataset.names)
        for idx, (pre, post, labels, indices) in enumerate(loader):
            pre, post = pre.to(device, non_blocking=True), post.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast():
                logits = model(pre, post)
            preds = logits.argmax(1)
            metrics.update(preds, labels)
            if save_maps:
                for i, index in enumerate(indices.tolist()):
                    save_change_map(os.path.join(save_maps, picture_names[index]), pre[i], post[i], labels[i],
                                    preds[i], c.DATA.MEAN, c.DATA.STD, name=loader.dataset.names[index])
            if (idx + 1) % c.PRINT_FREQ == 0 and idx + 1 < steps:
                elapsed = time.time() - start
                log.info(f"Test: [{idx + 1}/{steps}]  eta {format_eta(elapsed / (idx + 1) * (steps - idx - 1))}")
        counts = metrics.counts()
        result = {k.lower(): 100.0 * v for k, v in metrics.compute().items()}
        log.info(" * " + " ".join(f"{k} {result[k.lower()]:.2f}" for k in METRIC_NAMES)
                 + f"  ({len(loader.dataset)} pairs, {int(counts.sum())} pixels, {int(counts[1].sum())} changed)"
                 + (f" [{label}]" if label == "EMA" else ""))
        if save_maps:
            log.info(f"wrote pre | post | ground truth | prediction PNGs to {save_maps}")
        return result

    def summary(self, metrics: dict) -> str:
        return f"F1 {metrics['f1']:.2f} IoU {metrics['iou']:.2f}"

    def best_fields(self, record: dict) -> dict:
        return {"metrics": {k: record[f"test_{k.lower()}"] for k in METRIC_NAMES}}


def _holds_a_decoder(saved) -> bool:
    """Whether a checkpoint holds a whole change-detection model (decoder weights beside the encoder's)."""
    try:
        state = extract_state_dict(saved)
    except CheckpointError:
        return False
    return any(k.startswith(("decoder.", "module.decoder.")) for k in state)


def map_file_names(names) -> list:
    """The picture file of each pair: its name's stem + .png, or the whole name when two pairs share a stem
    (``dup.png`` and ``dup.bmp`` -> ``dup.png.png``, ``dup.bmp.png``), so no picture overwrites another; a name in a
    sub-folder (``sub/x.png`` in a list file) is flattened (``sub__x.png``), so every picture lands in the folder."""
    names = [n.replace(os.sep, "__").replace("/", "__") for n in names]  # list-file entries in sub-folders: flat
    stems = [os.path.splitext(n)[0] for n in names]
    shared = {s for s, count in Counter(stems).items() if count > 1}
    return [f"{n}.png" if s in shared else f"{s}.png" for n, s in zip(names, stems)]


def _to_uint8(image: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised (3, H, W) image back to (H, W, 3) uint8."""
    mean = torch.tensor(mean, device=image.device).view(3, 1, 1)
    std = torch.tensor(std, device=image.device).view(3, 1, 1)
    return ((image.float() * std + mean) * 255).clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()


CHANGE_COLOURS = {"hit": (255, 255, 255), "false alarm": (230, 30, 30), "miss": (40, 200, 40),
                  "ignored": (128, 128, 128)}
PANEL_TITLES = ("pre (T1)", "post (T2)", "ground truth", "prediction")


def change_map_colours(labels: torch.Tensor, preds: torch.Tensor) -> np.ndarray:
    """(H, W) labels and predictions -> (H, W, 3) uint8: white correct change (hit), black correct no-change,
    red false alarm, green missed change (ignored pixels grey)."""
    labels, preds = labels.cpu(), preds.cpu()
    out = np.zeros((*labels.shape, 3), np.uint8)
    out[(preds == 1) & (labels == 1)] = CHANGE_COLOURS["hit"]
    out[(preds == 1) & (labels == 0)] = CHANGE_COLOURS["false alarm"]
    out[(preds == 0) & (labels == 1)] = CHANGE_COLOURS["miss"]
    out[labels == 255] = CHANGE_COLOURS["ignored"]
    return out


def pair_scores(labels: torch.Tensor, preds: torch.Tensor) -> str:
    """F1 and IoU (percent) of one pair, or why they are undefined (no change in the truth nor the prediction)."""
    labels, preds = labels.cpu(), preds.cpu()
    valid, true = labels != 255, labels == 1
    found = (preds == 1) & valid
    tp, fp, fn = int((found & true).sum()), int((found & ~true).sum()), int((~found & true).sum())
    if tp + fp + fn == 0:
        return "no change, none predicted"
    scores = metrics_from_confusion([[int(valid.sum()) - tp - fp - fn, fp], [fn, tp]])
    return f"F1 {100 * scores['F1']:.1f}%, IoU {100 * scores['IoU']:.1f}%"


def _font(size: int):
    from PIL import ImageFont
    return ImageFont.load_default(size=size)


def save_change_map(path: str, pre, post, labels, preds, mean, std, name: str = None) -> list:
    """pre | post | ground truth | prediction side by side, as a PNG a person reads: tiles smaller than 256
    pixels upscaled (nearest neighbour), a title with the pair's F1 and IoU, a title above each panel and the
    prediction's colour legend below (:func:`change_map_colours`); the title is also the PNG's ``Title``.

    pre, post: normalised (3, H, W); labels (0, 1, 255 ignored) and preds: (H, W). Returns the panels' boxes
    (left, top, right, bottom) in the picture.
    """
    from PIL import ImageDraw, PngImagePlugin

    from ..analysis.plots import upscale_factor
    h, w = labels.shape[-2:]
    k = upscale_factor(h, w)
    truth = np.repeat(np.where(labels.cpu().numpy() == 1, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    truth[labels.cpu().numpy() == 255] = CHANGE_COLOURS["ignored"]
    panels = [_to_uint8(pre, mean, std), _to_uint8(post, mean, std), truth, change_map_colours(labels, preds)]
    panels = [np.repeat(np.repeat(p, k, axis=0), k, axis=1) for p in panels]
    ph, pw = h * k, w * k
    size = min(28, max(12, pw // 18))
    while size > 10 and max(_font(size).getlength(t) for t in PANEL_TITLES) > pw:
        size -= 1
    font, line, gap, margin = _font(size), round(size * 1.5), max(6, size // 2), max(8, size // 2)
    title = f"{name or os.path.splitext(os.path.basename(path))[0]}: {pair_scores(labels, preds)} (this pair)"
    top, width = margin + 2 * line, 4 * pw + 3 * gap + 2 * margin
    canvas = Image.new("RGB", (width, top + ph + line + 2 * margin), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, margin), title, fill="black", font=font)
    boxes = []
    for i, (panel, label) in enumerate(zip(panels, PANEL_TITLES)):
        left = margin + i * (pw + gap)
        canvas.paste(Image.fromarray(panel), (left, top))
        draw.text((left, margin + line), label, fill="black", font=font)
        boxes.append((left, top, left + pw, top + ph))
    x, y = margin, top + ph + margin
    draw.text((x, y), "prediction:", fill="black", font=font)
    x += font.getlength("prediction:") + size
    for label, colour in CHANGE_COLOURS.items():
        draw.rectangle((x, y + 2, x + size, y + 2 + size), fill=colour, outline="black")
        x += size * 1.4
        draw.text((x, y), label, fill="black", font=font)
        x += font.getlength(label) + size * 1.5
    x += size
    draw.text((x, y), "(black: no change)", fill="black", font=font)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    canvas.save(path, pnginfo=info)
    return boxes

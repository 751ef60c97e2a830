"""Class-attribution maps of any family's classifier, with the Grad-CAM family of the ``grad-cam`` package.

The maps are read at the last block of a stage (the last by default), ``model.layers[stage].blocks[-1]``, whose
output is channels-last (batch, h, w, C) in every family (h = H/32 for the last stage); it is handed to
``pytorch_grad_cam`` as (batch, C, h, w). A map has the resolution of that stage, upsampled to the image: an
earlier stage (``stage=-2``) gives finer maps, and small images need one (the last stage of a 32 x 32 input
is a single token, so its map is flat).

    maps = class_activation_maps(model, images, classes=[281, 285], method="gradcam")   # (batch, H, W) in [0, 1]
    overlay = overlay_map(view, maps[0])                                                 # (H, W, 3) uint8
    save_cam_figure("cat_gradcam.png", view, maps[0], "cat.png: tabby (71.2%)")         # titled, colour bar

:func:`save_cam_figure` draws a picture a person reads: inputs smaller than 256 pixels upscaled (the image by
nearest neighbour, so its pixels stay visible; the map bilinearly), a title and a colour bar of the scale.
"""
import numpy as np
import torch

# method name -> pytorch_grad_cam class (ScoreCAM runs a forward pass per channel: slow on a CPU)
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
               "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM",
               "gradcam-elementwise": "GradCAMElementWise", "scorecam": "ScoreCAM"}


def cam_target_layer(model: torch.nn.Module, stage: int = -1) -> torch.nn.Module:
    """The last block of ``stage`` (output (batch, h, w, C)), in every family's classifier."""
    layers = getattr(model, "layers", None)
    if layers is None or not hasattr(layers[0], "blocks"):
        raise ValueError(f"{type(model).__name__} has no layers[i].blocks: class-attribution maps need one of "
                         f"vssm's staged classifiers")
    if not -len(layers) <= stage < len(layers):
        raise ValueError(f"stage {stage} does not exist: {type(model).__name__} has {len(layers)} stages "
                         f"(0..{len(layers) - 1}, or -1 for the last)")
    return layers[stage].blocks[-1]


def map_size(model: torch.nn.Module, size, stage: int = -1) -> tuple:
    """(h, w) of the attribution map of ``stage`` for an (H, W) input, before upsampling."""
    reduction = model.feature_info[stage]["reduction"]
    return tuple(-(-s // reduction) for s in size)


def _nhwc_to_nchw(activations: torch.Tensor) -> torch.Tensor:
    return activations.permute(0, 3, 1, 2)


def class_activation_maps(model: torch.nn.Module, images: torch.Tensor, classes, method: str = "gradcam",
                          stage: int = -1) -> np.ndarray:
    """Attribution of ``classes[i]`` (a class index per image) over ``images[i]``: (batch, H, W) float32 in [0, 1].

    images: (batch, in_chans, H, W) as the model takes them (normalised); the maps have the images' H x W.
    stage: the stage whose last block is attributed (-1: the last).
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    if len(classes) != images.shape[0]:
        raise ValueError(f"one class per image: got {len(classes)} classes for {images.shape[0]} images")
    cam_class = getattr(pytorch_grad_cam, CAM_METHODS[method])
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with torch.enable_grad(), cam_class(model=model, target_layers=[cam_target_layer(model, stage)],
                                        reshape_transform=_nhwc_to_nchw) as cam:
        maps = cam(input_tensor=images, targets=targets)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def displayable(image: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised (C, H, W) model input back to an (H, W, 3) float32 picture in [0, 1]: RGB for 3 or more
    channels (the first three), grey from the first channel otherwise."""
    mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    picture = (image.detach().float().cpu() * std + mean).clamp(0, 1)
    picture = picture[:3] if picture.shape[0] >= 3 else picture[:1].expand(3, -1, -1)
    return picture.permute(1, 2, 0).numpy().astype(np.float32)


def overlay_map(picture: np.ndarray, attribution: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The attribution (H, W) in [0, 1] as a JET heatmap over ``picture`` (H, W, 3) in [0, 1]: (H, W, 3) uint8."""
    from pytorch_grad_cam.utils.image import show_cam_on_image
    return show_cam_on_image(picture, attribution, use_rgb=True, image_weight=image_weight)


def upscaled(picture: np.ndarray, attribution: np.ndarray, factor: int):
    """(H, W, 3) picture and (H, W) attribution, ``factor`` times larger: the picture by nearest neighbour (each
    input pixel a visible square), the attribution bilinearly (it is already a smooth upsampled map)."""
    if factor == 1:
        return picture, attribution
    big = np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)
    attribution = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(attribution))[None, None],
                                                  scale_factor=factor, mode="bilinear", align_corners=False)
    return big, attribution[0, 0].clamp(0, 1).numpy()


def save_cam_figure(path: str, picture: np.ndarray, attribution: np.ndarray, title: str,
                    scale_label: str = "attribution (1 = this image's maximum)") -> str:
    """The attribution (H, W) in [0, 1] over ``picture`` (H, W, 3) in [0, 1] as a PNG at ``path``: upscaled to at
    least 256 pixels on the short side, ``title`` above (lines wrapped to the picture's width; stored as the PNG's
    ``Title``, lines joined by "; "), a colour bar of the JET scale beside it. Returns ``path``."""
    import textwrap

    from ..analysis.plots import plt, save_figure, upscale_factor
    if float(attribution.max() - attribution.min()) < 1e-6:  # e.g. Grad-CAM's ReLU of only negative evidence
        title += f"\nflat map (all {float(attribution.max()):.2g}): nothing localised at this stage"
    picture, attribution = upscaled(picture, attribution, upscale_factor(*attribution.shape))
    overlay = overlay_map(picture, attribution)
    dpi, (H, W) = 100, overlay.shape[:2]
    width, height = W / dpi + 1.2, H / dpi + 0.2  # inches: the image at one pixel per pixel, the bar beside it
    fig = plt.figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_axes((0.1 / width, 0.1 / height, W / dpi / width, H / dpi / height))
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    columns = max(32, (W + 100) // 6)  # characters of 9-point text across the picture and the bar
    ax.set_title("\n".join(textwrap.fill(line, columns) for line in title.splitlines()), fontsize=9, loc="left")
    cax = fig.add_axes(((0.25 + W / dpi) / width, 0.1 / height, 0.15 / width, H / dpi / height))
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap="jet"), cax=cax)
    bar.set_label(scale_label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return save_figure(fig, path, title, dpi=dpi)

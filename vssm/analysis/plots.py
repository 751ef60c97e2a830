"""PNG figures of the analysis tools (matplotlib, no display needed), and what every picture of vssm shares:
a title stored in the PNG's ``Title`` text chunk (:func:`png_title` reads it back) and small inputs shown
upscaled (:func:`upscale_factor`)."""
import math
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .erf import log_relative  # noqa: E402

RANDOM_WEIGHTS = "random weights (no --checkpoint)"
READABLE_SIDE = 256  # pixels: the shortest side a picture of an input (or a panel) is drawn at


def weights_label(checkpoint: str = None) -> str:
    """What a figure says about the weights: ``random weights (no --checkpoint)`` or ``weights: <file name>``."""
    if not checkpoint:
        return RANDOM_WEIGHTS
    return f"weights: {os.path.basename(os.path.normpath(str(checkpoint)))}"


def upscale_factor(height: int, width: int, side: int = READABLE_SIDE) -> int:
    """The integer factor that brings the shorter of height and width to at least ``side`` pixels (1 if it is)."""
    return max(1, math.ceil(side / max(1, min(height, width))))


def png_title(path: str) -> str:
    """The ``Title`` text chunk of a PNG written by vssm ('' when it has none)."""
    from PIL import Image
    with Image.open(path) as img:
        return getattr(img, "text", {}).get("Title", "")


def png_title_text(title: str) -> str:
    """A figure's (multi-line) title as one line for the PNG's ``Title`` chunk."""
    return "; ".join(" ".join(line.split()) for line in title.splitlines() if line.strip())


def save_figure(fig, path: str, title: str, dpi: int = 120) -> str:
    """Write ``fig`` to ``path`` (folders created) with ``title`` in the PNG's ``Title`` chunk (its lines joined by
    "; "); close it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Title": png_title_text(title)})
    plt.close(fig)
    return path


def _grid(count: int, columns: int = 4, width: float = 3.6, height: float = 3.4):
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat)


def erf_figure(maps: dict, path: str, notes: dict = None, decades: float = 4.0, weights: dict = None) -> str:
    """One heatmap per {title: (H, W) contribution map}: log10(contribution / peak), clipped at -decades.

    weights: {title: checkpoint file or None}; each panel says which (``random weights (no --checkpoint)``),
    and so does the figure's title when no model has a checkpoint.
    """
    weights = weights if weights is not None else {}
    fig, axes = _grid(len(maps))
    for ax, (title, erf) in zip(axes, maps.items()):
        im = ax.imshow(log_relative(erf, decades).numpy(), cmap="RdYlGn", vmin=-decades, vmax=0)
        lines = [title, weights_label(weights.get(title))] + ([notes[title]] if notes and title in notes else [])
        ax.set_title("\n".join(lines), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[:len(maps)], shrink=0.8, label="log10(contribution / peak)")
    title = "Effective receptive field of the central output (RepLKNet method)"
    if not any(weights.get(t) for t in maps):
        title += f": {RANDOM_WEIGHTS}"
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, title)


def attention_figure(image, query, maps: dict, path: str, log_scale: bool = True, decades: float = 3.0,
                     title: str = "Implicit attention of the scans") -> str:
    """The image with the query marked, then one map per {title: (h, w) attention row}, as a PNG at ``path``.

    query: (row, col) fractions of the image (0.5, 0.5 = centre).
    """
    return save_figure(attention_plot(image, query, maps, log_scale, decades, title), path, title)


def attention_plot(image, query, maps: dict, log_scale: bool = True, decades: float = 3.0,
                   title: str = "Implicit attention of the scans"):
    """The figure of :func:`attention_figure`."""
    fig, axes = _grid(len(maps) + 1, columns=5)
    H, W = image.shape[:2]
    axes[0].imshow(image.numpy())
    axes[0].plot([query[1] * W], [query[0] * H], marker="x", color="red", markersize=12, mew=3)
    axes[0].set_title("input and query", fontsize=9)
    for ax, (name, row) in zip(axes[1:], maps.items()):
        if log_scale:
            values, vmin, vmax, label = log_relative(row.double(), decades).numpy(), -decades, 0, "log10(|alpha| / peak)"
        else:
            values, vmin, vmax, label = (row / row.max().clamp(min=1e-30)).numpy(), 0, 1, "|alpha| / peak"
        h, w = row.shape
        im = ax.imshow(values, cmap="magma", vmin=vmin, vmax=vmax, extent=(0, W, H, 0), interpolation="nearest")
        ax.plot([query[1] * W], [query[0] * H], marker="x", color="cyan", markersize=8, mew=2)
        ax.set_title(f"{name} ({h}x{w} tokens)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:len(maps) + 1], shrink=0.8, label=label)
    fig.suptitle(title, fontsize=10)
    return fig


def matrix_figure(matrices: dict, path: str, decades: float = 4.0, title: str = "Implicit attention matrices",
                  left_out: list = ()) -> str:
    """One (L, L) implicit-attention matrix per {title: matrix}: rows are queries, columns tokens (raster order),
    as a PNG at ``path``. left_out: lines naming the blocks not drawn and why, written under the figure."""
    return save_figure(matrix_plot(matrices, decades, title, left_out), path,
                       title + (". " + " ".join(left_out) if left_out else ""))


def matrix_plot(matrices: dict, decades: float = 4.0, title: str = "Implicit attention matrices", left_out: list = ()):
    """The figure of :func:`matrix_figure` (constrained layout: no label reaches a neighbouring panel)."""
    fig, axes = _grid(len(matrices), columns=3, width=4.4, height=4.2)
    for ax, (name, matrix) in zip(axes, matrices.items()):
        im = ax.imshow(log_relative(matrix.double(), decades).numpy(), cmap="magma", vmin=-decades, vmax=0,
                       interpolation="nearest")
        ax.set_title(f"{name} ({matrix.shape[0]} tokens)", fontsize=9)
        ax.set_xlabel("token (raster order)", fontsize=8)
        ax.set_ylabel("query (raster order)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=axes[:len(matrices)], shrink=0.8, label="log10(|alpha| / peak)")
    fig.suptitle(title, fontsize=10)
    if left_out:
        fig.supxlabel("\n".join(textwrap.fill(line, 110) for line in left_out), fontsize=8, color="dimgray")
    return fig


def line_figure(series: dict, path: str, xlabel: str, ylabel: str, title: str, log_y: bool = False) -> str:
    """One line per {name: (xs, ys)}."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    if log_y and all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def bar_figure(groups: list, panels: dict, path: str, title: str, series: list = None, columns: int = 2,
               series_title: str = None, stacked: bool = False) -> str:
    """Grouped (or ``stacked``) horizontal bar charts, one panel per {axis label: {series: [value per group or
    None]}}, ``columns`` panels a row.

    groups: the bars' labels (e.g. models); series: the bars of each group (e.g. input sizes), in order (default
    the first panel's keys), named in a legend under the panels when there are several. Each bar (a stacked
    bar: its total) is labelled with its value; a missing value (None) is drawn as the word "failed".
    """
    series = series or list(next(iter(panels.values())))
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    bars = 1 if stacked else len(series)
    height = 0.8 / bars
    fig, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained",
                             figsize=(5.4 * columns, rows * (0.9 + 0.4 * len(groups) * bars)))
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (label, values) in zip(axes.flat, panels.items()):
        table = [values.get(name, [None] * len(groups)) for name in series]
        if stacked:
            sums = [sum(v or 0 for v in column) for column in zip(*table)]
            top = max(sums, default=1.0) or 1.0
            left = [0.0] * len(groups)
            for k, (name, vals) in enumerate(zip(series, table)):
                ax.barh(range(len(groups)), [v or 0 for v in vals], left=left, height=0.8, label=name, color=f"C{k}")
                left = [a + (v or 0) for a, v in zip(left, vals)]
            for y, v in enumerate(sums):
                ax.text(v + 0.01 * top, y, f"{v:.3g}", va="center", fontsize=7)
        else:
            top = max((v for vals in table for v in vals if v is not None), default=1.0) or 1.0
            for k, (name, vals) in enumerate(zip(series, table)):
                ys = [i - 0.4 + height * (k + 0.5) for i in range(len(groups))]
                ax.barh(ys, [v or 0 for v in vals], height=height * 0.9, label=name, color=f"C{k}")
                for y, v in zip(ys, vals):
                    ax.text((v or 0) + 0.01 * top, y, "failed" if v is None else f"{v:.3g}", va="center", fontsize=7)
        ax.set_yticks(range(len(groups)), groups, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.18)
        ax.set_xlabel(label)
        ax.grid(True, axis="x", alpha=0.3)
    if len(series) > 1:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(series), 6), fontsize=8,
                   title=series_title, title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, title)

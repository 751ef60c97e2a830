"""PNG figures of the analysis tools (matplotlib, no display needed)."""
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .erf import log_relative  # noqa: E402


def _save(fig, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _grid(count: int, columns: int = 4, width: float = 3.6):
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat)


def erf_figure(maps: dict, path: str, notes: dict = None, decades: float = 4.0) -> str:
    """One heatmap per {title: (H, W) contribution map}: log10(contribution / peak), clipped at -decades."""
    fig, axes = _grid(len(maps))
    for ax, (title, erf) in zip(axes, maps.items()):
        im = ax.imshow(log_relative(erf, decades).numpy(), cmap="RdYlGn", vmin=-decades, vmax=0)
        ax.set_title(title + (f"\n{notes[title]}" if notes and title in notes else ""), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[:len(maps)], shrink=0.8, label="log10(contribution / peak)")
    fig.suptitle("Effective receptive field of the central output (RepLKNet method)", fontsize=10)
    return _save(fig, path)


def attention_figure(image, query, maps: dict, path: str, log_scale: bool = True, decades: float = 3.0) -> str:
    """The image with the query marked, then one map per {title: (h, w) attention row}.

    query: (row, col) fractions of the image (0.5, 0.5 = centre).
    """
    fig, axes = _grid(len(maps) + 1, columns=5)
    H, W = image.shape[:2]
    axes[0].imshow(image.numpy())
    axes[0].plot([query[1] * W], [query[0] * H], marker="x", color="red", markersize=12, mew=3)
    axes[0].set_title("input and query", fontsize=9)
    for ax, (title, row) in zip(axes[1:], maps.items()):
        if log_scale:
            values, vmin, vmax, label = log_relative(row.double(), decades).numpy(), -decades, 0, "log10(|alpha| / peak)"
        else:
            values, vmin, vmax, label = (row / row.max().clamp(min=1e-30)).numpy(), 0, 1, "|alpha| / peak"
        h, w = row.shape
        im = ax.imshow(values, cmap="magma", vmin=vmin, vmax=vmax, extent=(0, W, H, 0), interpolation="nearest")
        ax.plot([query[1] * W], [query[0] * H], marker="x", color="cyan", markersize=8, mew=2)
        ax.set_title(f"{title} ({h}x{w} tokens)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:len(maps) + 1], shrink=0.8, label=label)
    return _save(fig, path)


def matrix_figure(matrices: dict, path: str, decades: float = 4.0) -> str:
    """One (L, L) implicit-attention matrix per {title: matrix}: rows are queries, columns tokens (raster order)."""
    fig, axes = _grid(len(matrices), columns=4, width=4.2)
    for ax, (title, matrix) in zip(axes, matrices.items()):
        im = ax.imshow(log_relative(matrix.double(), decades).numpy(), cmap="magma", vmin=-decades, vmax=0,
                       interpolation="nearest")
        ax.set_title(f"{title} ({matrix.shape[0]} tokens)", fontsize=9)
        ax.set_xlabel("token (raster order)", fontsize=8)
        ax.set_ylabel("query (raster order)", fontsize=8)
    fig.colorbar(im, ax=axes[:len(matrices)], shrink=0.8, label="log10(|alpha| / peak)")
    return _save(fig, path)


def line_figure(series: dict, path: str, xlabel: str, ylabel: str, title: str, log_y: bool = False) -> str:
    """One line per {name: (xs, ys)}."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    if log_y and all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)

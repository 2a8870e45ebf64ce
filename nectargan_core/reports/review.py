"""Review a training run at a glance: a montage of its example strips and graphs of its epoch table.

The trainer writes example strips (input | generated | target, named as ``nectargan_core.layout``
says) and ``epochs.csv`` (one row per epoch, see ``nectargan_core.training.records.EPOCH_COLUMNS``). Looking
through dozens of strips or a wide CSV does not show how a run progressed; one grid image and
three small plots do. Both functions only read those files, so they work on a run in progress.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from nectargan_core.files import image_grid, read_epochs, save_image_atomic, write_atomic
from nectargan_core.layout import STRIP_PATTERN, ReviewPaths, find_strips
from nectargan_core.metric_names import LOSS_D, LOSS_G, LR_D, LR_G
from nectargan_core.settings import LOSS_NAMES

LEFT_MARGIN = 104  # px left of the grid, holds "epoch N"
TOP_MARGIN = 44  # px above the grid, holds "sample K" and "input | generated | target"
BLANK = (128, 128, 128)  # a cell whose strip is missing
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
FONT_SIZE = 16
_PANELS = ("input", "generated", "target")


def select_epochs(epochs: Sequence[int], every: int) -> list[int]:
    """Every ``every``-th of the sorted ``epochs`` from the first, plus the last so the newest is always shown."""
    if every < 1:
        raise ValueError(f"every must be a positive integer, got {every}")
    ordered = sorted(set(epochs))
    chosen = ordered[::every]
    if ordered and chosen[-1] != ordered[-1]:
        chosen.append(ordered[-1])
    return chosen


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's built-in font; scalable when FreeType is available, the fixed bitmap font otherwise.
    return ImageFont.load_default(size=size)


def example_montage(examples_dir: Path, out_path: Path, every: int = 1, samples: Sequence[int] | None = None) -> Path:
    """One PNG grid of example strips, a row per selected epoch and a column per sample.

    Shows how the generated images evolve over training. Rows are every ``every``-th epoch that
    has strips (the last always included); columns are ``samples`` (default: every sample index
    found). A missing strip leaves its cell grey. All cells take the size of the newest selected
    strip; strips of another size are resized to it. Returns ``out_path``.
    """
    examples_dir, out_path = Path(examples_dir), Path(out_path)
    strips = find_strips(examples_dir)
    if not strips:
        raise FileNotFoundError(
            f"no example strips ({STRIP_PATTERN}) in {examples_dir}: "
            "check the path, or train until examples are written"
        )
    present = sorted({sample for _, sample in strips})
    if samples is None:
        columns = present
    else:
        columns = list(samples)
        if not columns:
            raise ValueError("samples is empty: pass at least one sample index, or None for all")
        unknown = sorted(set(columns) - set(present))
        if unknown:
            raise ValueError(f"no strips for sample(s) {unknown} in {examples_dir}; samples present: {present}")
    rows = select_epochs([epoch for epoch, _ in strips], every)

    shown = [strips[(epoch, sample)] for epoch in reversed(rows) for sample in columns if (epoch, sample) in strips]
    with Image.open(shown[0] if shown else strips[max(strips)]) as image:
        cell_w, cell_h = image.size

    cells = [
        [_open_rgb(strips[(epoch, sample)]) if (epoch, sample) in strips else None for sample in columns]
        for epoch in rows
    ]
    canvas = image_grid(
        cells, (cell_w, cell_h), (LEFT_MARGIN, TOP_MARGIN), BACKGROUND, BLANK, Image.Resampling.BILINEAR
    )
    draw = ImageDraw.Draw(canvas)
    font, small = _font(), _font(FONT_SIZE - 4)
    for col, sample in enumerate(columns):
        left = LEFT_MARGIN + col * cell_w
        draw.text((left + cell_w / 2, 4), f"sample {sample}", fill=TEXT, font=font, anchor="ma")
        for panel, label in enumerate(_PANELS):
            centre = left + (panel + 0.5) * cell_w / len(_PANELS)
            draw.text((centre, TOP_MARGIN - 4), label, fill=TEXT, font=small, anchor="md")
    for row, epoch in enumerate(rows):
        top = TOP_MARGIN + row * cell_h
        draw.text((LEFT_MARGIN - 8, top + cell_h / 2), f"epoch {epoch}", fill=TEXT, font=font, anchor="rm")

    return save_image_atomic(canvas, out_path)


def _column(rows: list[dict[str, str]], name: str) -> list[float]:
    """Values of one column as floats; empty cells (a loss that did not run) become NaN, a gap in the line."""
    return [float(row[name]) if row.get(name, "").strip() else math.nan for row in rows]


def plotted_terms(header: Sequence[str], rows: list[dict[str, str]]) -> list[str]:
    """Unweighted loss terms that ran in at least one epoch, in the project's loss order: what loss_terms.png shows."""
    return [name for name in LOSS_NAMES if name in header and any(row[name].strip() for row in rows)]


def loss_graphs(epochs_csv: Path, out_dir: Path) -> list[Path]:
    """Plot the epoch table: ``losses.png`` (G and D), ``loss_terms.png`` (each term that ran), ``learning_rates.png``.

    Renders off-screen with Matplotlib's Agg canvas on standalone figures, so it needs no display,
    leaves pyplot's global state and the caller's backend alone, and keeps no figures alive.
    Returns the written paths.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs_csv, paths = Path(epochs_csv), ReviewPaths(Path(out_dir))
    header, rows = read_epochs(epochs_csv)
    epochs = [int(row["epoch"]) for row in rows]
    style = {"marker": "o", "markersize": 3, "linewidth": 1.5}  # markers keep single-epoch values visible
    paths.root.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Figure, path: Path) -> None:
        for ax in fig.axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
        fig.axes[-1].set_xlabel("epoch")
        write_atomic(path, lambda tmp: FigureCanvasAgg(fig).print_png(str(tmp)))
        written.append(path)

    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, column, label, colour in zip(
        axes, (LOSS_G.column, LOSS_D.column), ("generator loss", "discriminator loss"), ("C0", "C3"), strict=True
    ):
        ax.plot(epochs, _column(rows, column), color=colour, **style)
        ax.set_title(f"{label} ({column}, epoch mean)")
        ax.set_ylabel(column)
    save(fig, paths.losses)

    terms = plotted_terms(header, rows)
    fig = Figure(figsize=(8, max(3, 2.2 * len(terms))), dpi=100, layout="constrained")
    if terms:
        axes = fig.subplots(len(terms), 1, sharex=True, squeeze=False)[:, 0]
        fig.suptitle("loss terms (unweighted epoch means)")
        for index, (ax, name) in enumerate(zip(axes, terms, strict=True)):
            ax.plot(epochs, _column(rows, name), color=f"C{index}", **style)
            ax.set_ylabel(name)
    else:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no loss term ran in any epoch", ha="center", va="center", transform=ax.transAxes)
    save(fig, paths.loss_terms)

    fig = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.plot(epochs, _column(rows, LR_G.column), label=f"{LR_G.column} (generator)", **style)
    ax.plot(epochs, _column(rows, LR_D.column), label=f"{LR_D.column} (discriminator)", linestyle="--", **style)
    ax.set_title("learning rates")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.legend()
    save(fig, paths.learning_rates)
    return written

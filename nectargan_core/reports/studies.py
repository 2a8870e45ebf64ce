"""Images that compare runs: validation curves (one run's, or a sweep's overlaid) and a run's final strips.

They read only a run folder's files (``epochs.csv``, ``examples/``), like ``review``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from nectargan_core.files import image_grid, read_epochs, save_image_atomic, split_strip, write_atomic
from nectargan_core.layout import find_strips
from nectargan_core.metric_names import VAL_METRICS, val_metric


def val_curves(tables: dict[str, Path], out_path: Path) -> Path:
    """One PNG, a panel per validation metric, a line per labelled epoch table (runs without
    validation rows are left out of the legend with a note)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 2.6 * len(VAL_METRICS)), dpi=100, layout="constrained")
    axes = fig.subplots(len(VAL_METRICS), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle("validation (fixed val crops): comparable across loss weightings")
    for label, table in tables.items():
        _, rows = read_epochs(table)
        for ax, name in zip(axes, VAL_METRICS, strict=True):
            column = val_metric(name).column
            points = [(int(r["epoch"]), float(r[column])) for r in rows if r.get(column)]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, linewidth=1.5, label=label)
    for ax, name in zip(axes, VAL_METRICS, strict=True):
        ax.set_ylabel(val_metric(name).label)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax.transAxes)
    axes[-1].set_xlabel("epoch")
    return write_atomic(out_path, lambda tmp: FigureCanvasAgg(fig).print_png(str(tmp)))


def final_strips(examples_dir: Path, out_path: Path) -> Path | None:
    """The last epoch's example strips stacked top to bottom (None when there are none)."""
    strips = find_strips(examples_dir) if examples_dir.is_dir() else {}
    if not strips:
        return None
    last = max(epoch for epoch, _ in strips)
    images = []
    for _, sample in sorted(key for key in strips if key[0] == last):
        with Image.open(strips[(last, sample)]) as image:
            images.append([image.convert("RGB")])
    return save_image_atomic(image_grid(images, images[0][0].size), out_path)


def weightings_grid(examples: dict[str, Path], out_path: Path, label_height: int = 20) -> Path | None:
    """The same val inputs across runs: a row per sample (input, each run's generated image from its
    last epoch's strips, target), a label row on top. None when the runs share no sample."""
    last = {}
    for label, folder in examples.items():
        strips = find_strips(folder) if folder.is_dir() else {}
        if strips:
            epoch = max(e for e, _ in strips)
            last[label] = {sample: path for (e, sample), path in strips.items() if e == epoch}
    common = sorted(set.intersection(*(set(s) for s in last.values()))) if last else []
    if not common:
        return None
    labels = ["input", *last, "target"]
    first = next(iter(last.values()))
    width, height = split_strip(first[common[0]])[0].size
    cells = []
    for sample in common:
        x, _, y = split_strip(first[sample])
        cells.append([x, *(split_strip(strips[sample])[1] for strips in last.values()), y])
    canvas = image_grid(cells, (width, height), (0, label_height))
    draw = ImageDraw.Draw(canvas)
    for column, label in enumerate(labels):
        draw.text((column * width + 2, 4), label[: max(width // 7, 4)], fill="black")
    return save_image_atomic(canvas, out_path)


def optimisation_history(trials: list[tuple[int, float, str]], higher_is_better: bool, label: str, out: Path) -> Path:
    """A search's trials: each (number, value, state) a dot by its state, and the best value so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 3.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    for state in sorted({state for _, _, state in trials}):
        points = [(number, value) for number, value, s in trials if s == state]
        ax.scatter(*zip(*points, strict=True), s=24, label=state.lower())
    complete = sorted((number, value) for number, value, state in trials if state == "COMPLETE")
    if complete:
        pick = max if higher_is_better else min
        best = [pick(value for _, value in complete[: i + 1]) for i in range(len(complete))]
        ax.step([number for number, _ in complete], best, where="post", color="black", linewidth=1, label="best")
    ax.set(xlabel="trial", ylabel=label, title=f"optimisation history ({label}, pruned: at their last epoch)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if trials:
        ax.legend(fontsize=8)
    return write_atomic(out, lambda tmp: FigureCanvasAgg(fig).print_png(str(tmp)))


def importance_bars(importances: dict[str, float], out: Path) -> Path:
    """Each searched setting's importance for the selected metric (Optuna's evaluator), largest on top."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranked = sorted(importances.items(), key=lambda item: item[1])
    fig = Figure(figsize=(7, 1 + 0.4 * len(ranked)), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.barh([key for key, _ in ranked], [value for _, value in ranked])
    ax.set(xlabel="importance", title="parameter importance (complete trials)")
    return write_atomic(out, lambda tmp: FigureCanvasAgg(fig).print_png(str(tmp)))

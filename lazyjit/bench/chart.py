"""``speedups.png``: each contender's speedup over its workload's baseline, drawn with
matplotlib (the ``bench`` extra) when it is installed."""

from __future__ import annotations

from pathlib import Path

from .report import Results
from .timing import ratio


def chart(results: Results, path: Path) -> bool:
    """Horizontal bars of each contender's speedup over the baseline, one panel per
    workload, log scale; False (nothing written) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [
        (w, [(r.name, 1 / ratio(rows, r, w.baseline)) for r in rows if ratio(rows, r, w.baseline)])
        for w, rows in results
    ]
    panels = [(w, bars) for w, bars in panels if bars]
    if not panels:
        return False
    heights = [0.6 + 0.3 * len(bars) for _, bars in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, sum(heights)), squeeze=False, height_ratios=heights
    )
    for ax, (w, bars) in zip(axes[:, 0], panels):
        names, speedups = zip(*bars)
        # Bars from 1 (as fast as the baseline): faster to the right, slower to the left;
        # limits of at least 2x either way, so that a few percent do not look like much.
        widths = [s - 1.0 for s in speedups]
        colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
        ax.barh(names, widths, left=1.0, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        low, high = min(0.5, min(speedups) / 1.5), max(2.0, max(speedups) * 1.5)
        ax.set_xlim(low, high)
        ax.set_xticks(
            [t for t in (0.01, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high]
        )
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.invert_yaxis()
        ax.set_title(f"{w.name}: speedup over {w.baseline} (median per {w.unit})", fontsize=9)
        ax.tick_params(labelsize=8)
        for y, s in enumerate(speedups):
            ax.annotate(
                f"{s:.2f}x",
                (s, y),
                xytext=(3 if s >= 1 else -3, 0),
                textcoords="offset points",
                ha="left" if s >= 1 else "right",
                va="center",
                fontsize=7,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

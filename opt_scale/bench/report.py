"""Print a benchmark table, write its JSON, draw its plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple


def print_table(rows: list[dict], columns: list[str] | None = None, title: str = "") -> None:
    """Right-aligned plain-text columns: a dozen lines, where tabulate or rich
    would be a dependency for what benchmarks print once."""
    if not rows:
        print(f"{title}: no rows")
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_json(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {path}")


class Panel(NamedTuple):
    """One plot: ``series`` name -> (xs, ys); ``targets`` label -> y drawn as
    dashed horizontal lines (the goals a benchmark checks); ``bars`` for
    categorical xs (variants, not counts), drawn as grouped bars."""
    series: dict[str, tuple[list, list]]
    xlabel: str
    ylabel: str
    title: str
    targets: dict[str, float] | None = None
    bars: bool = False


def plot_lines(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str, path: str | Path,
               targets: dict[str, float] | None = None, bars: bool = False) -> None:
    """``series``: name -> (xs, ys)."""
    plot_panels([Panel(series, xlabel, ylabel, title, targets, bars)], path)


def plot_panels(panels: list[Panel | tuple], path: str | Path) -> None:
    """Side-by-side plots in one PNG, one per panel; every y axis starts at 0
    (these are rates, times and sizes: a cut axis would exaggerate a gap)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [Panel(*p) for p in panels]
    # A legend that would cover the lines (many series, or a target line
    # across the whole width) goes beside them.
    beside = any(len(p.series) > 4 or p.targets for p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 3 * beside, 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        (_draw_bars if panel.bars else _draw_lines)(ax, panel.series)
        for i, (label, y) in enumerate((panel.targets or {}).items()):
            ax.axhline(y, color="black" if i == 0 else "grey", linestyle="--", linewidth=1, label=label)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title)
        ax.grid(alpha=0.3, axis="y" if panel.bars else "both")
        if beside:
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
        else:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def _draw_lines(ax, series: dict[str, tuple[list, list]]) -> None:
    xs_all = sorted({x for xs, _ in series.values() for x in xs}, key=str)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) <= 40 else None, markersize=3, label=name)
    if len(xs_all) <= 12 and all(isinstance(x, int) for x in xs_all):  # worker counts, world sizes: no 1.5
        ax.set_xticks(xs_all)


def _draw_bars(ax, series: dict[str, tuple[list, list]]) -> None:
    """Grouped bars: one group per category (in first-seen order), one bar per series."""
    categories = list(dict.fromkeys(x for xs, _ in series.values() for x in xs))
    width = 0.8 / len(series)
    for k, (name, (xs, ys)) in enumerate(series.items()):
        at = [categories.index(x) + (k - (len(series) - 1) / 2) * width for x in xs]
        ax.bar(at, ys, width, label=name)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels([str(c) for c in categories], rotation=20 if len(categories) > 4 else 0,
                       ha="right" if len(categories) > 4 else "center")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return "-" if v is None else str(v)
